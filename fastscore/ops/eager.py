"""The eager path of the public ops: their registered autograd, called without the custom op.

A torch.library custom op costs tens of microseconds a call in Python (schema handling, the dispatcher,
its autograd wrapper), which a tiny tensor's kernel does not. Outside tracing, a public op calls its
backend's primitives directly, through an autograd.Function built from the SAME setup_context and
backward functions that are registered with the custom op: the gradient formula stays written once.
torch.compile, FakeTensor/proxy tracing, torch.func transforms and the meta device (where the custom
op runs its fake kernel) keep going through the registered op.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_level = torch._C._functorch.peek_interpreter_stack
_is_compiling = torch.compiler.is_compiling


def plain(x: torch.Tensor) -> bool:
    """Whether a call on x runs in plain eager mode: not traced, no dispatch mode or functorch transform
    active, and x holds values (not meta). Only then may an op skip its registered custom op."""
    return not (_is_compiling() or x.is_meta or _dispatch_modes() or _functorch_level() is not None)


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record a call on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def function(name: str, forward: Callable[..., Any], setup_context: Callable[..., None],
             backward: Callable[..., Any]) -> Any:
    """An autograd.Function running forward, with the setup_context and backward registered for a custom
    op (torch.library's register_autograd takes the same two functions: one formula, two entry points).

    The forward takes ctx and calls setup_context itself: a Function that defines setup_context has
    apply bind its arguments with inspect.signature on every call (about as slow as the custom op)."""
    def forward_with_ctx(ctx: Any, *args: Any) -> Any:
        output = forward(*args)
        setup_context(ctx, args, output)
        return output

    return type(name, (torch.autograd.Function,), {
        "__doc__": f"Eager autograd of the op whose forward is {forward.__qualname__} (fastscore/ops/eager.py).",
        "forward": staticmethod(forward_with_ctx),
        "backward": staticmethod(backward),
    })
