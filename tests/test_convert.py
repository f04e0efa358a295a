"""fastgpt's GPT is the lecture's model, and fastgpt.convert imports a lecture state_dict."""
import pytest
import torch

from lecture_gpt import VOCAB_TEXT, lecture_model
from clitools import assert_user_error, run_module, snapshot
from fastgpt import checkpoint
from fastgpt.convert import convert, gpt_from_lecture, gpt_state_dict, lecture_config
from fastgpt.errors import UserError

# 65 distinct characters, like tiny Shakespeare's vocabulary.
@pytest.mark.parametrize("n_head, n_layer, T", [(1, 1, 16), (3, 2, 16), (4, 3, 7)])
def test_same_logits_loss_and_gradients(n_head, n_layer, T):
    lecture = lecture_model(n_embd=8 * n_head, n_head=n_head, n_layer=n_layer)
    ours = gpt_from_lecture(lecture.state_dict(), dropout=0.0)
    ours.set_attention("torch")
    idx, targets = torch.randint(65, (3, T)), torch.randint(65, (3, T))
    lecture_logits, lecture_loss = lecture(idx, targets)
    logits, loss = ours(idx, targets)
    torch.testing.assert_close(logits.view(3 * T, -1), lecture_logits)
    torch.testing.assert_close(loss, lecture_loss)
    lecture_loss.backward()
    loss.backward()
    lecture_grads = {name: p.grad for name, p in lecture.named_parameters()}
    expected = gpt_state_dict(lecture_grads, ours.config)  # the lecture's gradients in our layout
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)


def test_training_mode_matches_at_dropout_zero():
    lecture = lecture_model()
    ours = gpt_from_lecture(lecture.state_dict(), dropout=0.0)
    idx = torch.randint(65, (2, 16))
    torch.testing.assert_close(ours.train()(idx)[0], lecture.train()(idx)[0])


def test_sizes_are_inferred():
    config = lecture_config(lecture_model(vocab_size=40, block_size=12, n_embd=20, n_head=5,
                                          n_layer=3).state_dict())
    assert (config.vocab_size, config.block_size, config.n_embd, config.n_head, config.n_layer) == \
        (40, 12, 20, 5, 3)


@pytest.fixture
def lecture_files(tmp_path):
    model = lecture_model(dropout=0.2).eval()
    state_path, vocab_path = tmp_path / "lecture.pt", tmp_path / "input.txt"
    torch.save(model.state_dict(), state_path)
    vocab_path.write_text(VOCAB_TEXT)
    return model, state_path, vocab_path


def test_cli_converts_to_a_checkpoint_with_the_same_logits(tmp_path, lecture_files):
    lecture, state_path, vocab_path = lecture_files
    out_dir = tmp_path / "converted"
    result = run_module("fastgpt.convert", state_path, "--vocab", vocab_path, "--out", out_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model, tokenizer = checkpoint.load(out_dir)
    assert tokenizer.itos == sorted(set(VOCAB_TEXT))
    idx = torch.randint(65, (2, 16))
    torch.testing.assert_close(model(idx)[0], lecture(idx)[0])

    before = snapshot(out_dir)  # a second conversion must not overwrite it
    result = run_module("fastgpt.convert", state_path, "--vocab", vocab_path, "--out", out_dir, cwd=tmp_path)
    assert_user_error(result, "already exists")
    assert snapshot(out_dir) == before


def edited(lecture_files, edit):
    _, state_path, _ = lecture_files
    state = torch.load(state_path, weights_only=True)
    edit(state)
    torch.save(state, state_path)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("blocks.1.ffwd.net.2.bias"), "no blocks.1.ffwd.net.2.bias"),
    (lambda s: s.pop("blocks.0.sa.heads.2.value.weight"), "no blocks.0.sa.heads.2.value.weight"),
    (lambda s: s.pop("token_embedding_table.weight"), "no token_embedding_table.weight"),
    (lambda s: s.update({"blocks.1.sa.proj.weight": torch.ones(24, 23)}),
     r"blocks.1.sa.proj.weight has shape \(24, 23\), expected \(24, 24\)"),
    (lambda s: s.update({"lm_head.bias": torch.ones(64)}), r"lm_head.bias has shape \(64,\)"),
    (lambda s: s.update({"position_embedding_table.weight": torch.ones(16)}), "expected a matrix"),
    (lambda s: s.update({"blocks.0.sa.gate.weight": torch.ones(2)}), "blocks.0.sa.gate.weight"),
])
def test_bad_state_dict_names_the_key(tmp_path, lecture_files, edit, message):
    edited(lecture_files, edit)
    _, state_path, vocab_path = lecture_files
    with pytest.raises(UserError, match=message):
        convert(state_path, vocab_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tril_buffers_are_optional(tmp_path, lecture_files):
    edited(lecture_files, lambda s: [s.pop(k) for k in list(s) if k.endswith(".tril")])
    _, state_path, vocab_path = lecture_files
    assert convert(state_path, vocab_path, tmp_path / "out").is_file()


def test_vocabulary_must_match(tmp_path, lecture_files):
    _, state_path, vocab_path = lecture_files
    vocab_path.write_text("abc")
    with pytest.raises(UserError, match="3 distinct characters.*65"):
        convert(state_path, vocab_path, tmp_path / "out")


def test_whole_pickled_model_is_refused(tmp_path, lecture_files):
    lecture, state_path, vocab_path = lecture_files
    torch.save(lecture, state_path)
    with pytest.raises(UserError, match="could run code.*state_dict"):
        convert(state_path, vocab_path, tmp_path / "out")
