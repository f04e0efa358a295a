"""fastgpt's benchmarks (pytest-benchmark files and `python -m bench.<tool>` scripts), run from a
checkout against the installed fastgpt.

`python -m bench.<tool>` from the checkout puts the checkout first on sys.path, where fastgpt/ lacks
the compiled extension and fastgpt.kernels (kernels/). So the checkout moves to the end of the path
here, before any benchmark imports fastgpt: the installed package runs, and the checkout's fastgpt/
only where none is installed.
"""
import os
import sys

_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_front = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) == _checkout]
if _front and "fastgpt" not in sys.modules:
    sys.path[:] = [entry for entry in sys.path if entry not in _front] + [_checkout]
