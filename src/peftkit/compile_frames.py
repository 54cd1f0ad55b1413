"""Entry points that ``torch.compile`` runs eagerly while it compiles what they call.

``PeftModel.forward`` and the other inference entry points turn per-sample adapter names into index tensors
and take the model's lock: Python that must stay out of the graph (a new mix of adapters would otherwise
recompile), while the model they call compiles. ``torch.compiler.disable(recursive=False)`` states exactly
that, but its wrapper makes dynamo examine the frame afresh on every call (its decision is not recorded on
the code object): about 0.3 ms per entry point and call, a fifth of a compiled one-token decode of a small
Llama. Dynamo's ``skip`` decorator records the same decision once, on the function's code object, and still
compiles the frames the function calls; it is used where the installed torch has it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch._dynamo  # what torch.compiler.disable imports too

_F = TypeVar("_F", bound=Callable[..., Any])


def eager_frame(fn: _F) -> _F:
    """``fn`` run eagerly under ``torch.compile``, with the functions it calls still compiled.

    Returns ``fn`` itself when dynamo offers ``decorators.skip`` (the decision is cached on ``fn.__code__``, so
    every function sharing that code object, e.g. closures made by one factory, is run eagerly too), else
    ``torch.compiler.disable(fn, recursive=False)``.
    """
    skip = getattr(getattr(torch._dynamo, "decorators", None), "skip", None)
    if skip is None:
        return torch.compiler.disable(fn, recursive=False)
    return skip(fn)
