"""fastgpt's Triton kernels (installed as fastgpt.kernels), registered by fastgpt.ops.cuda."""
