"""Properties under PyTorch's compiler: torch.compile, with a fixed batch and with the batch size symbolic.

Both are held to ``fn``'s own eager result at the same inputs. A compiled training
loop compiles twice: once for the first batch (its sizes fixed), and again at an
epoch's smaller last batch, with the batch dimension symbolic. ``compile`` is the
first compilation, ``compile-dynamic`` the second; a backward can trace with fixed
sizes and still fail where the backend must order sizes it only knows as symbols.
Every hint is read from the error: its type and message, the line of fn it points
at, the operation the backend was lowering.
"""

from __future__ import annotations

import contextlib
import linecache
import logging
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

from torchbp.verification.outcome import Failed, NotApplicable, verifies
from torchbp.verification.subject import Run, Subject, is_custom_op
from torchbp.verification.transforms import require_batch


def _fresh_compiled(subject: Subject, dynamic: bool | None) -> tuple[Callable[..., Any], types.CodeType]:
    """fn compiled whole (fullgraph), from a fresh code object, and that code object.

    The compiler keeps its caches on code objects: a fresh one compiles afresh, without clearing (or counting
    against) anything the caller compiled. What it learns of changing sizes it keeps by the code's file, line
    and name, alike for every fresh copy: ``dynamic=False`` keeps one verify's sizes from making the next's
    symbolic; with None, the caller marks which sizes are (and turns that learning off while it runs).
    """

    def call(*inputs: Any) -> Any:  # as a model calls fn; the compiler starts from a plain function
        return subject.fn(*inputs)

    code = call.__code__.replace()
    fresh = types.FunctionType(code, call.__globals__, call.__name__, None, call.__closure__)
    return torch.compile(fresh, fullgraph=True, backend=subject.compile_backend, dynamic=dynamic), code


def _run_compiled(subject: Subject, compiled: Callable[..., Any], inputs: list[Any]) -> Run:
    """Forward and backward through ``compiled``; a failure of the compiler as Failed, with the fix its error
    points to."""
    import torch._dynamo

    try:
        with _quiet("torch._subclasses.fake_tensor"):  # its traceback of what the row reports in a line
            return subject.run(compiled, inputs)
    except torch._dynamo.exc.Unsupported as error:
        reason = _reason(error)
        if "jvp" in reason:  # not the Function's mistake: this PyTorch's compiler has no forward mode for it
            reason += " (torch.compile refuses any Function that defines jvp: drop the jvp, or skip compile)"
        fix = _graph_break_fix(f"{reason}\n{error}", _source_line(error))
        raise Failed(f"graph break: {reason}", fix=fix) from None
    except torch._dynamo.exc.TorchRuntimeError as error:
        if not is_custom_op(subject.fn) or "fake" not in str(error).lower():
            raise
        raise Failed(
            f"the compiler's fake-tensor run of {subject.name} failed: {_reason(error)}",
            fix="the op has no fake kernel, or a wrong one: register one with op.register_fake (see opcheck-fake)",
        ) from None
    except torch._dynamo.exc.BackendCompilerFailed as error:
        raise _backend_failed(subject, error) from None


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """``logger`` silent below CRITICAL while the block runs, and as it was afterwards."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _held_to_eager(subject: Subject, compiled: Run, eager: Run) -> str:
    try:
        return subject.compare(subject.pairs(compiled, eager))
    except Failed as wrong:
        if not is_custom_op(subject.fn):
            raise
        raise Failed(
            str(wrong),
            fix="compiled, the op's gradient is not eager's: its autograd is not registered where the compiler's "
            "dispatcher looks (an autograd.Function inside its kernel): op.register_autograd (see opcheck-autograd)",
        ) from None


@verifies(
    "compile",
    "Python control flow on a tensor value (if x.sum() > 0), .item(), .numpy() or printing in forward or backward",
)
def check_compile(subject: Subject) -> str:
    """Torch.compile(fullgraph=True) traces forward and backward with no graph break, with eager's results."""
    compiled, _ = _fresh_compiled(subject, dynamic=False)
    measured = _held_to_eager(subject, _run_compiled(subject, compiled, subject.inputs()), subject.baseline)
    return f"{subject.compile_backend}, no graph break: {measured}"


@verifies(
    "compile-dynamic",
    "a step whose sizes the backend must know, computed from the batch size (a convolution whose channels are "
    "the batch); and the causes under compile",
)
def check_compile_dynamic(subject: Subject) -> str:
    """Compiled with the batch dimension symbolic, fn runs a batch and then a smaller one (an epoch's last),
    each with eager's results at that size."""
    import torch._dynamo

    require_batch(subject)
    if subject.batch_size == 0:
        raise NotApplicable("the examples have no samples (empty-batch covers that case)")
    # Two sizes above 1, which the compiler would fix; the examples' samples over again where they are fewer.
    big = max(subject.batch_size, 3)
    compiled, code = _fresh_compiled(subject, dynamic=None)
    measured = []
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):  # the batch symbolic, the other sizes fixed
        for n in (big, big - 1):
            inputs = subject.inputs(samples=n)
            for i in subject.batched:
                torch._dynamo.maybe_mark_dynamic(inputs[i], subject.batch_dims[i])
            try:
                run = _run_compiled(subject, compiled, inputs)
            except Failed as failed:
                raise Failed(f"batch {n}: {failed}", fix=failed.fix) from None
            try:
                measured.append(_held_to_eager(subject, run, subject.run(subject.fn, subject.inputs(samples=n))))
            except Failed as wrong:
                raise Failed(f"batch {n}: {wrong}", fix=wrong.fix or _symbolic_values_differ(subject)) from None
    return f"{subject.compile_backend}, batch {big} then {big - 1}{_graphs(code)}: {measured[-1]}"


def _symbolic_values_differ(subject: Subject) -> str:
    return (
        "compiled with the batch size a symbol, fn computes other values than eagerly at the same size: the "
        f"backend's code for symbolic sizes ({subject.compile_backend}; compile_backend='aot_eager' tells fn's "
        "trace from the backend's code), or a route fn takes while compiling that only symbolic sizes reach"
    )


def _graphs(code: types.CodeType) -> str:
    """', one graph for both' or ', N graphs: …': how many times the compiler compiled ``code``."""
    entries = getattr(torch._dynamo.eval_frame, "_debug_get_cache_entry_list", None)  # a debugging aid of torch's
    if entries is None:
        return ""
    count = len(entries(code))
    return ", one graph for both" if count == 1 else f", {count} graphs: fn fixes the batch size, and recompiles"


def _backend_failed(subject: Subject, error: Exception) -> Failed:
    """The backend failed after fn traced: on a size it only knows as a symbol, or otherwise."""
    reason = _reason(error)
    if is_custom_op(subject.fn):
        fix = "the op's fake kernel (register_fake) gives an output unlike the real kernel's, and the compiler "
        fix += "traced with it: see opcheck-fake"
    elif "Relational" in reason or re.search(r"\bs\d+\b", reason):
        where = _lowering(error)
        fix = (
            f"the backend had to decide an expression of the symbolic sizes (s… are sizes it knows only as symbols) "
            f"while generating code{where}: a step whose sizes or strides it must know, computed from the batch "
            "size (a convolution whose channel count is the batch, as the weight gradient conv2d(xᵀ, δᵀ) has): "
            "compute that step without it (an einsum over the input's windows), or choose the route with "
            "torch.compiler.is_compiling()"
        )
    else:
        fix = "an error inside the compiler's backend after fn traced without a graph break, not a mistake the "
        fix += "trace found in fn: try compile_backend='aot_eager' to confirm, and report the error to PyTorch"
    return Failed(f"the {subject.compile_backend} backend failed: {reason}", fix=fix)


def _lowering(error: Exception) -> str:
    """' for aten.op': the graph node the backend was generating code for when it raised, read from the
    traceback ('' where it does not say). The node may come from fn's backward although the compiler placed it
    in its forward graph (its partitioner moves views and cheap steps there), so no phase is named."""
    for failure in (error.__cause__, error):
        traceback = failure.__traceback__ if failure is not None else None
        node = None
        while traceback is not None:
            if isinstance(traceback.tb_frame.f_locals.get("n"), torch.fx.Node):
                node = traceback.tb_frame.f_locals["n"]
            traceback = traceback.tb_next
        if node is not None:
            return f" for {node.target}"
    return ""


# What a graph break's error or the line it points at says (any of the words: PyTorch releases word it
# differently), and the fix for it (else the property's usual one).
GRAPH_BREAK_CAUSES = (
    (("saved_variables",), "ctx.saved_variables is the old name the compiler does not know: use ctx.saved_tensors"),
    (
        (
            "failed to bind arguments when attempting to inline",  # torch 2.13
            "raised exception TypeError('Too many positional arguments",  # torch 2.14: the extra one is cls
        ),
        "forward, setup_context or backward written as a @classmethod: the compiler calls them as static "
        "methods; make them @staticmethod",
    ),
)


def _graph_break_fix(error: str, line: str) -> str | None:
    for words, fix in GRAPH_BREAK_CAUSES:
        if any(word in error or word in line for word in words):
            return fix
    return None


def _source_line(error: Exception) -> str:
    """The source line of the innermost 'File "…", line N' the error names, or ''."""
    places = re.findall(r'File "([^"]+)", line (\d+)', str(error))
    return linecache.getline(places[-1][0], int(places[-1][1])) if places else ""


def _reason(error: Exception) -> str:
    """The error's first line, and where in the user's code it happened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    where = next((line for line in reversed(lines) if line.startswith('File "')), None)  # innermost: fn's code
    reason = lines[0][:200] if lines else type(error).__name__
    return f"{reason} ({where})" if where else reason
