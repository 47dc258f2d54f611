"""Fold every eval-mode BatchNorm into the layer that produces its input.

At test time a BatchNorm is a fixed per-channel affine map, ``y = x * s + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean * s``. When ``x`` is the
output of a conv or linear layer that nothing else reads, ``s`` and ``t`` go into that layer:
``W' = W * s`` (along the output-channel axis) and ``b' = b * s + t``. The exported graph then
holds no BatchNormalization at all.

Producers are found from the graph traced with ``torch.fx`` (every ``_BatchNorm`` subclass is
a leaf), never from module order. A BN is folded only when that is provably exact:

- its input is the only use of a ``Conv1d/2d/3d`` (grouped and depthwise too), a
  ``ConvTranspose1d/2d/3d`` (scaled per output channel, i.e. axis 1 of each group of its
  ``(in, out/groups, ...)`` weight) or a ``Linear`` whose input is provably ``(N, C)``;
- that layer is called once and shares no parameter with anything else;
- the channel counts agree.

Any other BN (after a ReLU, on the model input, after a conv whose output is also used
elsewhere, a shared conv, a Linear on ``(N, C, L)`` input, ...) becomes an exact
:class:`BatchNormScaleShift`, which exports as Mul/Add; the report says which and why. A BN
that uses batch statistics, a functional ``F.batch_norm`` call or a model torch.fx cannot trace
are refused with a :class:`FoldError` saying why and what to do.

The arithmetic is done in float64 from the stored statistics, whatever the model's dtype; the
folded values are cast to the target dtype and refused if they are not finite there (e.g. a
tiny ``running_var`` in float16).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.utils._pytree import tree_leaves

from .errors import FoldError

COMPUTE_DTYPE = torch.float64  # folding arithmetic, whatever the model's dtype

# Functional batch norms that torch.fx records as calls, not modules: they cannot be folded
# (their statistics may be anything, batch statistics included), so they are refused.
_FUNCTIONAL_BN = {F.batch_norm, torch.batch_norm, torch.native_batch_norm}
for _name in ("_native_batch_norm_legit_no_training", "_native_batch_norm_legit"):
    if hasattr(torch, _name):
        _FUNCTIONAL_BN.add(getattr(torch, _name))

# Modules and functions that keep the rank of their (first) input: used to prove that a
# Linear's input is (N, C) when no example input is given.
_RANK_KEEPING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Softsign, nn.Dropout, nn.AlphaDropout, nn.Identity, nn.Linear, _BatchNorm,
)
_RANK_KEEPING_FUNCTIONS = {
    torch.relu, torch.sigmoid, torch.tanh, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu,
    F.elu, F.sigmoid, F.tanh, F.dropout, F.hardtanh, F.hardswish, F.softplus, F.linear,
}
_RANK_KEEPING_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "float", "half", "to",
                         "clone", "detach"}


class BatchNormScaleShift(nn.Module):
    """An eval-mode BatchNorm that could not be folded, as the exact per-channel affine map
    ``x * scale + shift`` along dim 1 (exports as Mul/Add, never as BatchNormalization).
    For float16/bfloat16 inputs the map is computed in float32 and cast back, as PyTorch's
    own CPU BatchNorm does."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, source: str = ""):
        super().__init__()
        self.num_features = int(scale.numel())
        self.source = source
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{self.source or 'BatchNormScaleShift'}: expected (N, "
                             f"{self.num_features}, ...) input, got {tuple(x.shape)}")
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        scale, shift = self.scale.view(shape), self.shift.view(shape)
        if x.dtype != scale.dtype:
            return (x.to(scale.dtype) * scale + shift).to(x.dtype)
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.num_features}, source={self.source!r}"


class _BNLeafTracer(fx.Tracer):
    """Every BatchNorm (subclasses included, e.g. NoisyBatchNorm2d whose forward has Python
    control flow on ``self.training``) is one opaque call in the graph."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _BatchNorm) or super().is_leaf_module(m, qualname)


# --- the arithmetic (pure functions) -------------------------------------------------------------

def bn_scale_shift(bn: _BatchNorm, name: str = "bn") -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` in float64 with ``bn(x) == x * s + t`` per channel (eval mode)."""
    _check_running_stats(bn, name)
    mean = bn.running_mean.detach().to(COMPUTE_DTYPE)
    var = bn.running_var.detach().to(COMPUTE_DTYPE)
    c = bn.num_features
    gamma = bn.weight.detach().to(COMPUTE_DTYPE) if bn.weight is not None else torch.ones(c, dtype=COMPUTE_DTYPE)
    beta = bn.bias.detach().to(COMPUTE_DTYPE) if bn.bias is not None else torch.zeros(c, dtype=COMPUTE_DTYPE)
    denom = var + float(bn.eps)
    if not torch.isfinite(mean).all() or not torch.isfinite(var).all() or (denom <= 0).any():
        raise FoldError(f"BatchNorm {name!r} has invalid running statistics (non-finite mean/var "
                        f"or running_var + eps <= 0; eps={bn.eps}): the checkpoint is corrupt or "
                        "was never trained; retrain or fix its buffers.")
    scale = gamma / torch.sqrt(denom)
    shift = beta - mean * scale
    if not torch.isfinite(scale).all() or not torch.isfinite(shift).all():
        raise FoldError(f"BatchNorm {name!r}: gamma / sqrt(running_var + eps) is not finite "
                        "even in float64; fix the checkpoint's BN parameters.")
    return scale, shift


def fold_into_layer(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New ``(weight, bias)`` in float64 for ``layer`` followed by the affine map ``(scale, shift)``
    along its output channels. ``layer`` is a Conv, ConvTranspose or Linear; it is not modified."""
    w = layer.weight.detach().to(COMPUTE_DTYPE)
    b = (layer.bias.detach().to(COMPUTE_DTYPE) if layer.bias is not None
         else torch.zeros(scale.numel(), dtype=COMPUTE_DTYPE))
    if isinstance(layer, _ConvTransposeNd):
        # weight (in, out/groups, *k): output channel g*(out/groups)+j lives at [g-th block of
        # in-channels, j]; scale it per group.
        g = layer.groups
        cin, cout_g = w.shape[0], w.shape[1]
        k = w.shape[2:]
        w = (w.reshape(g, cin // g, cout_g, *k)
             * scale.reshape(g, 1, cout_g, *([1] * len(k)))).reshape(w.shape)
    else:  # Conv (out, in/groups, *k) and Linear (out, in): output channel is axis 0
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    return w, b * scale + shift


# --- the graph pass ------------------------------------------------------------------------------

@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor] | None = None,
                   dtype: torch.dtype | None = None) -> tuple[nn.Module, dict]:
    """Fold every BatchNorm of ``model`` (see the module docstring). Returns ``(folded, report)``:
    ``folded`` is an eval-mode deep copy of the same class (``model`` is never mutated) with each
    folded BN replaced by ``nn.Identity`` and each other BN by a :class:`BatchNormScaleShift`;
    ``report`` is a JSON-able dict naming every BN and what became of it.

    ``example_input`` (optional) lets shapes be propagated, which proves whether a Linear's
    input is ``(N, C)``; without it that is proven structurally (e.g. after ``nn.Flatten``) or
    the BN is kept as an exact scale-and-shift. With an example input the folded model is also
    checked against the original on it. ``dtype`` (optional) converts the result to that
    floating dtype, folding from the original-precision statistics and refusing values that
    are not finite in it (float16 overflow)."""
    if dtype is not None and not dtype.is_floating_point:
        raise FoldError(f"target dtype must be floating point, got {dtype}")
    folded = _eval_copy(model)
    if isinstance(folded, _BatchNorm):  # a lone BN: nothing to fold into, and fx would trace inside it
        folded = nn.Sequential(folded)
        report = _fold_in_place(folded, example_input, dtype)
        folded = folded[0]
    else:
        report = _fold_in_place(folded, example_input, dtype)
    if dtype is not None:
        folded = _convert_dtype(folded, dtype)
    if example_input is not None:
        reference = _eval_copy(model)  # the caller's model keeps its modes
        report["check"] = _self_check(reference, folded, example_input, dtype)
    return folded, report


def _eval_copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model).eval()
    except Exception as e:
        raise FoldError(
            f"cannot copy {type(model).__name__} ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "folding works on a copy so the input model is never changed. If the model uses the "
            "old torch.nn.utils.weight_norm, remove it (torch.nn.utils.remove_weight_norm) first.") from None


def _fold_in_place(model: nn.Module, example_input, dtype: torch.dtype | None) -> dict:
    all_bn = {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    report: dict = {"traced_with": "torch.fx", "batchnorms": len(all_bn), "folded": [],
                    "scale_shift": [], "not_in_graph": [], "shapes": "not propagated",
                    "compute_dtype": str(COMPUTE_DTYPE).removeprefix("torch."),
                    "target_dtype": None if dtype is None else str(dtype).removeprefix("torch.")}
    for name, bn in all_bn.items():
        _check_running_stats(bn, name)
        if _has_hooks(bn):
            raise FoldError(f"BatchNorm {name!r} has forward hooks; replacing it would drop them "
                            "and change the model. Remove the hooks before exporting.")
        _check_behaves_as_bn(bn, name)

    try:
        graph = _BNLeafTracer().trace(model)
    except Exception as e:  # any tracing failure: say why folding needs a graph
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if not all_bn:
            report["traced_with"] = f"not traced ({type(e).__name__}); no BatchNorm modules to fold"
            return report
        raise FoldError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(e).__name__}: {first}). "
            "Folding needs the static graph to find the layer feeding each BatchNorm. Remove "
            "data-dependent Python control flow from forward (e.g. `if x.sum() > 0`), or move it "
            "into a submodule that holds no BatchNorm, then export again.") from None
    modules = dict(model.named_modules())

    for node in graph.nodes:
        if node.op == "call_function" and node.target in _FUNCTIONAL_BN:
            raise FoldError(
                f"{type(model).__name__}.forward calls {getattr(node.target, '__name__', node.target)} "
                f"directly (graph node {node.name!r}): a functional batch norm is not a module, so "
                "its statistics cannot be checked or folded (it may even use batch statistics). "
                "Use an nn.BatchNorm1d/2d/3d module instead.")

    ranks = _node_ranks(graph, modules, example_input, model)
    report["shapes"] = ("propagated from the example input" if ranks is not None and example_input is not None
                        else "structural (no example input)")

    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    seen_bn: set[str] = set()
    replaced: dict[int, nn.Module] = {}  # id(bn) -> replacement module
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        bn_name = node.target
        bn = modules[bn_name]
        seen_bn.add(bn_name)
        if id(bn) in replaced:  # a BN module called more than once: already a scale-shift
            continue
        producer, why_not = _foldable_producer(node, bn, graph, modules, calls, ranks, model)
        if producer is None:
            scale, shift = bn_scale_shift(bn, bn_name)
            store = _scale_shift_dtype(bn, dtype)
            scale, shift = _finite_in(scale, store, bn_name, "scale"), _finite_in(shift, store, bn_name, "shift")
            repl = BatchNormScaleShift(scale, shift, source=bn_name)
            replaced[id(bn)] = repl
            report["scale_shift"].append({"bn": bn_name, "reason": why_not})
            continue
        layer_name = producer.target
        layer = modules[layer_name]
        scale, shift = bn_scale_shift(bn, bn_name)
        w, b = fold_into_layer(layer, scale, shift)
        target = dtype or layer.weight.dtype
        w = _finite_in(w, target, bn_name, f"folded weight of {layer_name!r}")
        b = _finite_in(b, target, bn_name, f"folded bias of {layer_name!r}")
        layer.weight = nn.Parameter(w.to(layer.weight.device), requires_grad=layer.weight.requires_grad)
        layer.bias = nn.Parameter(b.to(layer.weight.device), requires_grad=layer.weight.requires_grad)
        replaced[id(bn)] = nn.Identity()
        report["folded"].append({"bn": bn_name, "into": layer_name, "layer": type(layer).__name__})
        # Later BNs now see the layer as their producer (BN after BN folds too).
        node.replace_all_uses_with(producer)
        graph.erase_node(node)

    _replace_modules(model, replaced)
    report["not_in_graph"] = sorted(set(all_bn) - seen_bn)
    return report


def _foldable_producer(node: fx.Node, bn: _BatchNorm, graph: fx.Graph, modules: dict,
                       calls: Counter, ranks: dict | None, root: nn.Module) -> tuple[fx.Node | None, str]:
    """``(producer node, "")`` when ``bn`` folds exactly into it, else ``(None, reason)``."""
    if calls[node.target] > 1:
        return None, f"the BatchNorm module is called {calls[node.target]} times"
    if len(node.args) != 1 or node.kwargs:
        return None, "the BatchNorm is called with unusual arguments"
    p = node.args[0]
    if not isinstance(p, fx.Node):
        return None, "the BatchNorm input is not a traced tensor"
    if p.op == "placeholder":
        return None, "its input is the model input (no layer to fold into)"
    if p.op != "call_module":
        what = getattr(p.target, "__name__", str(p.target))
        return None, f"its input comes from {p.op} {what!r}, not a Conv/ConvTranspose/Linear module"
    layer = modules[p.target]
    kind = type(layer).__name__
    if not isinstance(layer, (_ConvNd, nn.Linear)):
        return None, f"its input comes from {kind} {p.target!r}, not a Conv/ConvTranspose/Linear"
    if type(layer).forward not in {c.forward for c in _FOLDABLE_TYPES}:
        return None, f"{kind} {p.target!r} overrides forward; folding into it is not provably exact"
    if _has_hooks(layer) or nn.utils.parametrize.is_parametrized(layer):
        return None, (f"{kind} {p.target!r} has hooks or parametrizations (e.g. weight_norm) "
                      "that recompute or change its output; its weights cannot be rewritten")
    if len(p.users) != 1:
        others = sorted(u.name for u in p.users if u is not node)
        return None, f"the output of {kind} {p.target!r} is also used by {', '.join(others)}"
    if calls[p.target] > 1:
        return None, f"{kind} {p.target!r} is called {calls[p.target]} times (shared weights)"
    shared = _shared_params(p.target, layer, graph, modules, root)
    if shared:
        return None, f"{kind} {p.target!r} shares its parameters with {', '.join(shared)}"
    if not layer.weight.dtype.is_floating_point:
        return None, f"{kind} {p.target!r} has non-floating weights ({layer.weight.dtype})"
    out_ch = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if out_ch != bn.num_features:
        return None, (f"{kind} {p.target!r} has {out_ch} output channels but the BatchNorm has "
                      f"{bn.num_features}")
    rank = None if ranks is None else ranks.get(p)
    if isinstance(layer, nn.Linear):
        if rank is None:
            return None, (f"cannot prove that the input of Linear {p.target!r} is (N, C) (pass "
                          "example_input to fold it); on (N, C, L) input BN normalises dim 1, not "
                          "the Linear's features")
        if rank != 2:
            return None, (f"Linear {p.target!r} runs on {rank}-D input: the BatchNorm's channel "
                          "is dim 1, not the Linear's output features")
    else:
        batched = len(layer.kernel_size) + 2
        if rank is not None and rank != batched:
            return None, f"{kind} {p.target!r} runs on unbatched {rank}-D input"
    return p, ""


_FOLDABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d, nn.Linear)


def _shared_params(target: str, layer: nn.Module, graph: fx.Graph, modules: dict,
                   root: nn.Module) -> list[str]:
    """Names under which ``layer``'s weight/bias are reachable other than through ``layer``."""
    mine = {id(t) for t in (layer.weight, layer.bias) if t is not None}
    out = []
    for pname, prm in root.named_parameters(remove_duplicate=False):
        owner = pname.rpartition(".")[0]
        if id(prm) in mine and modules.get(owner) is not layer:
            out.append(pname)
    for n in graph.nodes:
        if n.op == "get_attr" and n.target.rpartition(".")[0] == target:
            out.append(f"graph attribute {n.target}")
    return sorted(set(out))


def _node_ranks(graph: fx.Graph, modules: dict, example_input, root: nn.Module) -> dict:
    """Rank of every node's output: exact from shape propagation when an example input is
    given, else structural (None where unknown)."""
    if example_input is not None:
        from torch.fx.passes.shape_prop import ShapeProp
        args = tuple(example_input) if isinstance(example_input, (list, tuple)) else (example_input,)
        gm = fx.GraphModule(root, graph)
        try:
            ShapeProp(gm).propagate(*args)
        except Exception as e:
            raise FoldError(f"the example input {[tuple(a.shape) for a in args]} does not run "
                            f"through the model ({type(e).__name__}: {e}); pass one it accepts.") from None
        ranks = {}
        for n in graph.nodes:
            meta = n.meta.get("tensor_meta")
            ranks[n] = len(meta.shape) if hasattr(meta, "shape") else None
        return ranks
    ranks: dict = {}
    for n in graph.nodes:
        first = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        r_in = ranks.get(first) if first is not None else None
        r = None
        if n.op == "call_module":
            m = modules.get(n.target)
            if isinstance(m, nn.Flatten):
                if m.start_dim == 1 and m.end_dim == -1:
                    r = 2
            elif isinstance(m, _RANK_KEEPING_MODULES):
                r = r_in
        elif n.op == "call_function":
            if n.target is torch.flatten:
                start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
                end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
                if end == -1 and start in (0, 1):
                    r = start + 1
            elif n.target in _RANK_KEEPING_FUNCTIONS:
                r = r_in
        elif n.op == "call_method":
            if n.target == "flatten":
                start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
                end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
                if end == -1 and start in (0, 1):
                    r = start + 1
            elif n.target in ("view", "reshape") and len(n.args) >= 2:
                shape = n.args[1:] if len(n.args) > 2 else n.args[1]
                if isinstance(shape, (list, tuple)):
                    r = len(shape)
                elif len(n.args) == 2 and not isinstance(shape, fx.Node):
                    r = 1
            elif n.target in _RANK_KEEPING_METHODS:
                r = r_in
        ranks[n] = r
    return ranks


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None)
                or getattr(m, "_forward_pre_hooks_with_kwargs", None))


def _check_running_stats(bn: _BatchNorm, name: str) -> None:
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise FoldError(
            f"BatchNorm {name!r} ({type(bn).__name__}) has track_running_stats=False: it "
            "normalises with the statistics of each batch even in eval mode, so its output for an "
            "image depends on the other images in the batch and it is no fixed per-channel "
            "affine map that could be folded. Retrain with track_running_stats=True, or estimate "
            "running statistics on training data and set them, then export again.")
    if isinstance(bn.running_mean, nn.parameter.UninitializedBuffer):
        raise FoldError(f"BatchNorm {name!r} is a lazy module that was never run; run one batch "
                        "through the model (or load its checkpoint) before exporting.")


def _check_behaves_as_bn(bn: _BatchNorm, name: str) -> None:
    """A subclass that overrides forward must still be plain BatchNorm in eval mode (e.g.
    NoisyBatchNorm2d); checked on a random input rather than trusted."""
    if type(bn).forward is _BatchNorm.forward:
        return
    dims = {nn.BatchNorm1d: 3, nn.BatchNorm2d: 4, nn.BatchNorm3d: 5}
    rank = next((r for cls, r in dims.items() if isinstance(bn, cls)), 4)
    c = bn.num_features
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, *([3] * (rank - 2)), generator=gen).to(bn.running_mean.dtype)
    was = bn.training
    bn.eval()
    try:
        got = bn(x)
    finally:
        bn.train(was)
    ref = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-4, atol=1e-5, equal_nan=True):
        raise FoldError(f"{type(bn).__name__} {name!r} overrides forward and does not behave as "
                        "BatchNorm in eval mode; folding it would change the model. Export a model "
                        "whose eval-mode BN is plain BatchNorm.")


def _scale_shift_dtype(bn: _BatchNorm, dtype: torch.dtype | None) -> torch.dtype:
    target = dtype or bn.running_mean.dtype
    return torch.float32 if target in (torch.float16, torch.bfloat16) else target


def _finite_in(values: torch.Tensor, dtype: torch.dtype, bn_name: str, what: str) -> torch.Tensor:
    cast = values.to(dtype)
    if not torch.isfinite(cast).all():
        big = float(values.abs().max())
        limit = torch.finfo(dtype).max
        raise FoldError(
            f"folding BatchNorm {bn_name!r} gives a {what} that is not finite in "
            f"{str(dtype).removeprefix('torch.')} (largest |value| {big:.4g}, limit {limit:.4g}); "
            "typically a tiny running_var scales the weights past the dtype's range. Export in "
            "float32 (drop --fp16), or check the BN statistics of the checkpoint.")
    return cast


def _replace_modules(root: nn.Module, replaced: dict[int, nn.Module]) -> None:
    if not replaced:
        return
    targets = []
    for _, parent in root.named_modules(remove_duplicate=False):
        for child_name, child in parent._modules.items():  # not named_children: keeps aliases
            if child is not None and id(child) in replaced:
                targets.append((parent, child_name, child))
    for parent, child_name, child in targets:
        repl = replaced[id(child)]
        if isinstance(repl, BatchNormScaleShift):
            repl = repl.to(device=child.running_mean.device)
        setattr(parent, child_name, repl)


def _convert_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Convert every floating parameter/buffer except scale-shift buffers kept in float32 for
    half types; refuse values that do not fit the target dtype."""
    keep = {id(t) for m in model.modules() if isinstance(m, BatchNormScaleShift)
            for t in (m.scale, m.shift)}
    for mod_name, mod in model.named_modules():
        for pname, prm in list(mod.named_parameters(recurse=False)):
            if prm is not None and prm.dtype.is_floating_point and id(prm) not in keep:
                new = _finite_in(prm.detach(), dtype, mod_name, f"parameter {pname!r}")
                setattr(mod, pname, nn.Parameter(new, requires_grad=prm.requires_grad))
        for bname, buf in list(mod.named_buffers(recurse=False)):
            if buf is not None and buf.dtype.is_floating_point and id(buf) not in keep:
                if isinstance(mod, BatchNormScaleShift):
                    continue
                mod._buffers[bname] = _finite_in(buf.detach(), dtype, mod_name, f"buffer {bname!r}")
    return model


def _self_check(original: nn.Module, folded: nn.Module, example_input, dtype) -> dict:
    """Compare folded and original on the example input; a gross mismatch (a wrong axis, a
    wrong producer) is an error, never a silently wrong model."""
    args = tuple(example_input) if isinstance(example_input, (list, tuple)) else (example_input,)
    fargs = tuple(a.to(dtype) if dtype is not None and a.dtype.is_floating_point else a for a in args)
    refs = [t for t in tree_leaves(original(*args)) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    gots = [t for t in tree_leaves(folded(*fargs)) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if len(refs) != len(gots) or any(r.shape != g.shape for r, g in zip(refs, gots, strict=False)):
        raise FoldError("the folded model's outputs do not have the original's structure (bug); refusing it.")
    ref64 = torch.cat([r.detach().reshape(-1).to(COMPUTE_DTYPE) for r in refs] or [torch.zeros(0, dtype=COMPUTE_DTYPE)])
    got64 = torch.cat([g.detach().reshape(-1).to(COMPUTE_DTYPE) for g in gots] or [torch.zeros(0, dtype=COMPUTE_DTYPE)])
    diff = float((ref64 - got64).abs().max()) if ref64.numel() else 0.0
    scale = float(ref64.abs().max()) if ref64.numel() else 0.0
    low = (dtype or (refs[0].dtype if refs else torch.float32)) in (torch.float16, torch.bfloat16)
    rel_tol = 5e-2 if low else 1e-4
    ok = math.isfinite(diff) and diff <= rel_tol * max(1.0, scale)
    if not ok:
        raise FoldError(f"the folded model differs from the original on the example input "
                        f"(max |diff| {diff:.3g}, max |output| {scale:.3g}); refusing it. This is "
                        "a bug in folding for this architecture: export without folding to inspect.")
    return {"max_abs_diff": diff, "max_abs_output": scale, "relative_tolerance": rel_tol}
