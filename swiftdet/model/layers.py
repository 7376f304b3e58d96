"""Small building blocks shared by the detectors: norm layers by name, conv + norm + activation,
deformable convolution (:class:`DeformConv2d`), weight-standardised convolution
(:func:`use_weight_standardization`) and folding of frozen norms into the preceding convs for
inference (:func:`fuse_conv_bn`)."""
from __future__ import annotations

import copy
import functools

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d, deform_conv2d

from swiftdet.errors import InputError

__all__ = ["ConvNormAct", "ConvAct2d", "DeformConv2d", "FoldedNorm", "WSConv2d", "conv_norm", "conv_norm_act", "fuse_conv_bn", "fuse_for_inference", "linear_relu", "prepare_for_training",
           "get_norm",
           "is_fused", "standardize_weight", "use_weight_standardization"]


def get_norm(name: str, channels: int, eps: float = 1e-5) -> nn.Module | None:
    """The norm layer called ``name`` for ``channels`` channels, or None for "".

    "FrozenBN" is a BatchNorm whose statistics and affine parameters are fixed buffers (what
    ImageNet-initialised detection backbones use); "GN" uses 32 groups. ``eps`` is that of the
    BatchNorm kinds (torchvision runs its legacy COCO detection weights with FrozenBN eps 0).
    """
    if name == "":
        return None
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=eps)
    if name == "BN":
        return nn.BatchNorm2d(channels, eps=eps)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels, eps=eps)
    if name == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm {name!r}; expected '', 'FrozenBN', 'BN', 'SyncBN' or 'GN'")


def conv_norm(conv: nn.Module, norm: nn.Module | None, x: Tensor) -> Tensor:
    """``norm(conv(x))``. In training, a FrozenBatchNorm2d after a plain Conv2d is a constant
    per-channel scale and shift, so it is applied as the conv's weight scale and bias: one
    convolution with a bias instead of a convolution and two passes over its output forward and
    one backward (the weight's gradient flows through the scale, so the trained parameter is the
    conv's weight as before). In evaluation the modules run as they are (the unfused model's
    outputs stay bit-identical; ``fuse_conv_bn`` folds the norms for good)."""
    if (norm is not None and conv.training and type(norm) is FrozenBatchNorm2d and type(conv) is nn.Conv2d
            and conv.padding_mode == "zeros"):
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # FrozenBatchNorm2d's own arithmetic
        shift = norm.bias - norm.running_mean * scale
        bias = shift if conv.bias is None else conv.bias * scale + shift
        return F.conv2d(x, conv.weight * scale.reshape(-1, 1, 1, 1), bias, conv.stride, conv.padding, conv.dilation,
                        conv.groups)
    x = conv(x)
    return x if norm is None else norm(x)


def _pointwise_op(name: str):
    """oneDNN's convolution or matmul ``name`` with fused element-wise epilogues (what inductor's CPU
    fusion calls), or None where this PyTorch build lacks it."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return None if ops is None or not torch.backends.mkldnn.is_available() else getattr(ops, name)
    except (AttributeError, RuntimeError):
        return None


_POINTWISE = _pointwise_op("_convolution_pointwise")
_LINEAR_POINTWISE = _pointwise_op("_linear_pointwise")


def _is_exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # newer than torch 2.4
    return bool(is_exporting is not None and is_exporting())


def _runs_in_onednn(conv: nn.Module, norm: nn.Module | None, x: Tensor) -> bool:
    """Whether ``relu(conv(x) [+ residual])`` may run as one oneDNN call: eager CPU inference in
    float32 or under bfloat16 autocast (operands cast to bfloat16, as autocast would; the epilogue
    then rounds once, where separate ops round after the conv and after the sum) of a plain Conv2d
    whose norm is folded away (or absent), on channels-last input.
    Channels-last CPU convolutions run in oneDNN anyway and the epilogue is applied to the same
    accumulators: outputs equal the separate ops' bit for bit at detection feature sizes, and within
    float rounding on maps of a few pixels, where oneDNN may pick another kernel for the fused call
    (tests/test_fused_act.py). NCHW inputs may take PyTorch's other kernels, traces and exports need
    standard ops, and torch.compile chooses its own kernels: those keep the separate ops."""
    return (_POINTWISE is not None and (norm is None or type(norm) is FoldedNorm) and type(conv) in _ONEDNN_CONVS
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str) and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and _eager_cpu_inference(conv, x))


def _eager_cpu_inference(module: nn.Module, x: Tensor) -> bool:
    """Eager CPU inference of ``module`` on ``x`` in float32, or under bfloat16 autocast
    (``--precision bf16``): no gradient, trace, script, export or compile, which need the standard
    ops (or choose their own kernels)."""
    return (not module.training and x.device.type == "cpu" and _onednn_dtype(x) is not None
            and not (torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad))
            and not torch.jit.is_scripting() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not _is_exporting())


def _onednn_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype a fused oneDNN call on ``x`` runs in: float32, or bfloat16 under CPU bfloat16
    autocast (the dtype autocast gives convolutions and matrix products); None for anything else."""
    if not torch.is_autocast_enabled("cpu"):
        return torch.float32 if x.dtype == torch.float32 else None
    autocast_dtype = torch.get_autocast_dtype("cpu") if hasattr(torch, "get_autocast_dtype") else torch.get_autocast_cpu_dtype()
    return torch.bfloat16 if autocast_dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16) else None


def _in_dtype(dtype: torch.dtype | None, *tensors: Tensor | None) -> list[Tensor | None]:
    """``tensors`` (None stays None) in ``dtype``: a fused call's operands, cast as autocast would."""
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]


@functools.cache
def _nnpack_ready() -> bool:
    """Whether NNPACK's convolution runs here at its speed: built into this PyTorch, initialised (its
    availability check initialises it; the convolution fails before), on an x86 CPU with AVX2 or
    AVX-512, where its Winograd kernels are AVX2 code. Elsewhere its portable kernels are slower than
    oneDNN."""
    try:
        return bool(torch.backends.nnpack.is_available()
                    and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))
    except (AttributeError, RuntimeError):
        return False


# Where NNPACK's Winograd convolution beats oneDNN's direct one, including the two layout copies
# it needs (it reads and writes NCHW; the fast path is channels-last), as timed layer by layer on
# the 2-core AVX-512 CPU: on one image from a few thousand output pixels at 128+ channels (ResNet's
# res3/res4, the FPN levels down to P4); a batch of RoIs takes NNPACK's batched algorithm, which
# only wins from ~50 RoIs of 14x14; at 64 channels the copies cost more than the convolution saves.
# ``benchmarks/fused_epilogues.py`` times whole models with and without it.
_NNPACK_MIN_PIXELS = 3000
_NNPACK_MIN_BATCH_PIXELS = 9000
_NNPACK_MIN_CHANNELS = 128


def _nnpack_shaped(conv: nn.Module) -> bool:
    """Whether ``conv`` is a convolution NNPACK's path takes, its input aside: a plain 3x3, stride-1,
    padding-1 convolution with 128+ input and output channels that :func:`fuse_for_inference`
    marked (the plain model keeps PyTorch's convolution, as trained)."""
    return (type(conv) in _ONEDNN_CONVS and getattr(conv, "nnpack", False) and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.in_channels >= _NNPACK_MIN_CHANNELS
            and conv.out_channels >= _NNPACK_MIN_CHANNELS)


def _runs_in_nnpack(conv: nn.Module, norm: nn.Module | None, x: Tensor) -> bool:
    """Whether ``conv`` (with its norm folded away, or none) runs as NNPACK's Winograd F(6x6, 3x3)
    convolution: a convolution of the fused model of the form :func:`_nnpack_shaped` names, in eager
    CPU inference in float32 (not under autocast: bfloat16 keeps oneDNN), on a map large enough to
    gain (the thresholds above). Winograd's transforms round differently from a direct convolution:
    outputs differ by ~1e-5 relative, where oneDNN and PyTorch's other kernels differ by ~1e-7
    (tests/test_nnpack_conv.py bounds it)."""
    if not (_nnpack_shaped(conv) and (norm is None or type(norm) is FoldedNorm) and x.dim() == 4
            and x.dtype == torch.float32):
        return False
    n, _, h, w = x.shape
    return (n * h * w >= (_NNPACK_MIN_PIXELS if n == 1 else _NNPACK_MIN_BATCH_PIXELS)
            and not torch.is_autocast_enabled("cpu") and _eager_cpu_inference(conv, x) and _nnpack_ready())


# NNPACK keeps a workspace sized for the largest call it has run (one per process, never freed),
# a few times that call's output: for P2 of an 800x1216 image, larger than the map itself. Calls are
# cut to outputs of at most this size (bands of rows, chunks of RoIs), which bounds the workspace and
# the NCHW copies; P2 in bands also ran no slower than whole on the test CPU.
_NNPACK_OUTPUT_BYTES = 12 * 2**20


def _is_channels_last(t: Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _empty_like_layout(x: Tensor, channels: int, channels_last: bool) -> Tensor:
    n, _, h, w = x.shape
    return torch.empty((n, channels, h, w), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _nnpack_conv(conv: nn.Module, x: Tensor, activation: str, residual: Tensor | None) -> Tensor:
    """``activation(conv(x) [+ residual])`` through NNPACK (see :func:`_runs_in_nnpack`): channels-last
    where the input or the weight is, else (or where ``conv.hands_nchw``) NCHW. An image whose output
    is large is convolved in bands of rows (a multiple of Winograd's 6-row output tile, each read
    with its 1-row halo, zeros beyond the border), smaller images in chunks of the batch, each piece
    written into the output as it is done: the NCHW copies and NNPACK's workspace stay a piece's size."""
    n, c, h, w = x.shape
    weight = conv.weight.contiguous()
    # The fast path's layout (its weights are channels-last), unless the next conv reads NCHW.
    channels_last = not getattr(conv, "hands_nchw", False) and (_is_channels_last(x) or _is_channels_last(conv.weight))
    row_bytes = conv.out_channels * w * x.element_size()
    eager = _ACTIVATIONS[activation][0]

    def run(piece: Tensor, padding: list[int], items: slice, rows: slice) -> Tensor:
        y = torch._nnpack_spatial_convolution(piece, weight, conv.bias, padding)
        if residual is not None:
            y += residual[items, :, rows]
        return eager(y)

    if h * row_bytes > _NNPACK_OUTPUT_BYTES:  # (image, rows) bands
        step = max(6, _NNPACK_OUTPUT_BYTES // row_bytes // 6 * 6)
        pieces = [(slice(i, i + 1), slice(top, min(top + step, h))) for i in range(n) for top in range(0, h, step)]
    else:  # chunks of whole images
        size = -(-n // max(1, -(-n * h * row_bytes // _NNPACK_OUTPUT_BYTES)))
        pieces = [(slice(start, min(start + size, n)), slice(0, h)) for start in range(0, n, size)]
    if len(pieces) == 1:
        y = run(x.contiguous(), [1, 1], slice(None), slice(None))
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y
    out = _empty_like_layout(x, conv.out_channels, channels_last)
    for items, rows in pieces:
        if rows.stop - rows.start == h:
            out[items] = run(x[items].contiguous(), [1, 1], items, rows)
            continue
        top, bottom = rows.start, rows.stop
        first, last = max(top - 1, 0), min(bottom + 1, h)
        band = x.new_empty((1, c, bottom - top + 2, w))
        if top == 0:
            band[:, :, 0].zero_()
        if bottom == h:
            band[:, :, -1].zero_()
        band[:, :, first - top + 1:last - top + 1].copy_(x[items, :, first:last])
        out[items, :, rows] = run(band, [0, 1], items, rows)
    return out


def linear_relu(linear: nn.Linear, x: Tensor, onednn: bool = False) -> Tensor:
    """``relu(linear(x))`` for (N, in) ``x``. With ``onednn`` (the caller's input came through the
    fused model's channels-last path) and in eager CPU inference (float32, or bfloat16 autocast),
    as one oneDNN matmul with the ReLU as its epilogue, which ran the box head's 1000x12544 @
    12544x1024 product faster than the BLAS ``addmm`` on the AVX-512 test CPU (another summation
    order: float rounding). The plain model keeps ``F.linear``, as torchvision."""
    if onednn and _LINEAR_POINTWISE is not None and x.dim() == 2 and _eager_cpu_inference(linear, x):
        return _LINEAR_POINTWISE(*_in_dtype(_onednn_dtype(x), x, linear.weight, linear.bias), "relu", [], "")
    return F.relu(linear(x))


# Activations a conv block may end in: the eager function, and oneDNN's name and scalars for it.
_ACTIVATIONS = {
    "relu": (F.relu_, "relu", []),
    "relu6": (lambda x: F.hardtanh_(x, 0.0, 6.0), "hardtanh", [0.0, 6.0]),
    "hardswish": (lambda x: F.hardswish(x, inplace=True), "hardswish", []),
    "": (lambda x: x, "none", []),
}


def conv_norm_act(conv: nn.Module, norm: nn.Module | None, x: Tensor, activation: str = "relu",
                  residual: Tensor | None = None) -> Tensor:
    """``activation(norm(conv(x)) + residual)`` (``residual`` optional; ``activation`` one of
    "relu", "relu6", "hardswish" or "" for none): a conv block's output. In the fused inference
    model on the CPU (:func:`_runs_in_onednn`) the activation, and the residual sum of a ResNet or
    MobileNet block, are the convolution's epilogue: no separate passes over the output (on
    ResNet-50 at 800x1216 those passes are the backbone's largest non-convolution cost)."""
    if _runs_in_nnpack(conv, norm, x):
        return _nnpack_conv(conv, x, activation, residual)
    eager, name, scalars = _ACTIVATIONS[activation]
    if _runs_in_onednn(conv, norm, x):
        x, weight, bias, residual = _in_dtype(_onednn_dtype(x), x, conv.weight, conv.bias, residual)
        args = (weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        if residual is None:
            return _POINTWISE(x, *args, name, scalars, "")
        return _POINTWISE.binary(x, residual, *args, "add", None, None if name == "none" else name, scalars, "")
    out = conv_norm(conv, norm, x)
    return eager(out if residual is None else out + residual)


class ConvAct2d(nn.Conv2d):
    """A Conv2d whose output goes through ``activation`` (:func:`conv_norm_act`'s names): what
    :func:`fuse_for_inference` puts where a ``Sequential`` holds a conv followed by ReLU or ReLU6
    (that module becomes an Identity), so that the two run as one call. Same parameters and
    state-dict keys as the conv."""

    activation = "relu"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: str) -> "ConvAct2d":
        fused = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")
        fused.weight, fused.bias, fused.activation = conv.weight, conv.bias, activation
        return fused.train(conv.training)

    def forward(self, x: Tensor) -> Tensor:
        if _runs_in_nnpack(self, None, x) or _runs_in_onednn(self, None, x):
            return conv_norm_act(self, None, x, self.activation)
        return _ACTIVATIONS[self.activation][0](super().forward(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


_ONEDNN_CONVS = (nn.Conv2d, ConvAct2d)


class ConvNormAct(nn.Module):
    """Conv2d, optional norm, optional ReLU. The conv has a bias only when there is no norm.

    Submodules are named ``conv`` and ``norm`` (when present) so checkpoints read plainly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        norm: str = "",
        activation: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=norm == ""
        )
        self.norm = get_norm(norm, out_channels)
        self.activation = activation

    # (conv, norm) attribute pairs where forward applies the norm directly to the conv's output.
    conv_norm_pairs = (("conv", "norm"),)

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return conv_norm_act(self.conv, self.norm, x)
        return conv_norm(self.conv, self.norm, x)


def standardize_weight(weight: Tensor, eps: float = 1e-5) -> Tensor:
    """``weight`` (C_out, ...) minus its per-output-channel mean, divided by that channel's standard
    deviation plus ``eps``: mmcv's ``conv_ws_2d`` (``Tensor.std``, i.e. with Bessel's correction,
    and eps added to the std, not to the variance)."""
    flat = weight.reshape(weight.shape[0], -1)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    mean = flat.mean(dim=1).reshape(shape)
    std = flat.std(dim=1, unbiased=True).reshape(shape)
    return (weight - mean) / (std + eps)


class WSConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised (:func:`standardize_weight`) at every call: mmcv's
    ``ConvWS2d`` of mmdetection's GN+WS models. The stored ``weight`` is the raw parameter."""

    ws_eps = 1e-5

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, standardize_weight(self.weight, self.ws_eps), self.bias)


class DeformConv2d(nn.Module):
    """Deformable 3x3 convolution (v1, or v2 with ``modulated``) run by torchvision's ``deform_conv2d``.

    ``forward(x, offset_out)`` takes the (B, C_in, H, W) input and the raw output of the offset
    conv that predicts the sampling positions, (B, 2 * G * k * k, H', W') for v1 or
    (B, 3 * G * k * k, H', W') for v2 (G = ``offset_groups``). v2 splits it as detectron2 does: the
    first 2 * G * k * k channels are the offsets ((dy, dx) pairs per kernel tap, torchvision's and
    detectron2's layout), the last G * k * k the mask logits, passed through a sigmoid.
    Holds ``weight`` (C_out, C_in / groups, k, k) and ``bias`` (None unless a norm was folded in).
    ``weight_standardization`` standardises the weight at every call (:func:`standardize_weight`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        offset_groups: int = 1,
        modulated: bool = False,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups or in_channels % offset_groups:
            raise ValueError(f"DeformConv2d: {in_channels} input / {out_channels} output channels do not divide into "
                             f"{groups} groups and {offset_groups} offset groups")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.register_parameter("bias", None)
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.offset_groups, self.modulated = groups, offset_groups, modulated
        self.weight_standardization = False

    def deform(self, x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, C_out, H', W') from explicit offsets (B, 2Gkk, H', W') and optional mask (B, Gkk, H', W')."""
        weight = standardize_weight(self.weight) if self.weight_standardization else self.weight
        return deform_conv2d(x, offset, weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)

    def forward(self, x: Tensor, offset_out: Tensor) -> Tensor:
        if not self.modulated:
            return self.deform(x, offset_out)
        taps = self.offset_groups * self.weight.shape[2] * self.weight.shape[3]
        return self.deform(x, offset_out[:, : 2 * taps], offset_out[:, 2 * taps :].sigmoid())

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={self.weight.shape[2]}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"offset_groups={self.offset_groups}, modulated={self.modulated}")


class FoldedNorm(nn.Module):
    """Stands where a norm layer was folded into the preceding conv by :func:`fuse_conv_bn`.

    The identity in eval mode. In training mode it refuses to run: the folded conv no longer has
    the norm's separate statistics and parameters, so training it would not train the original model.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            raise InputError(
                "This model was fused for inference (fuse_conv_bn folded its norm layers into the convs) and "
                "cannot be trained or run in training mode. Train the original, unfused model, then fuse a "
                "copy of it for inference."
            )
        return x


def _foldable(norm: nn.Module) -> bool:
    """A norm that is a fixed per-channel affine map in eval mode: FrozenBN, or BatchNorm with running stats."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats and norm.running_var is not None


def _fold(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold ``norm`` (applied to ``conv``'s output) into ``conv``'s weight and bias, in place.

    norm(y) = y * scale + shift with scale = weight / sqrt(running_var + eps) and
    shift = bias - running_mean * scale, computed in float64 then cast back, so the folded conv
    differs from conv + norm only by float rounding.
    """
    eps = norm.eps
    weight = norm.weight.double() if norm.weight is not None else torch.ones_like(norm.running_var, dtype=torch.float64)
    bias = norm.bias.double() if norm.bias is not None else torch.zeros_like(norm.running_var, dtype=torch.float64)
    scale = weight / (norm.running_var.double() + eps).sqrt()
    shift = bias - norm.running_mean.double() * scale
    w = conv.weight.detach()
    conv_bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(shift)
    new_weight = (w.double() * scale.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
    new_bias = (conv_bias * scale + shift).to(w.dtype)
    conv.weight = nn.Parameter(new_weight, requires_grad=False)
    conv.bias = nn.Parameter(new_bias, requires_grad=False)


def _conv_norm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of the (conv, norm) children of ``module`` where the norm directly follows the conv.

    In a Sequential the order of the children is the order of evaluation; other modules declare
    their pairs in a ``conv_norm_pairs`` class attribute (ConvNormAct, the ResNet blocks).
    """
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        return [(a, b) for a, b in zip(names, names[1:]) if isinstance(module._modules[a], nn.Conv2d)]
    return list(getattr(module, "conv_norm_pairs", ()))


@torch.no_grad()
def use_weight_standardization(model: nn.Module) -> nn.Module:
    """Make every conv directly followed by a GroupNorm in ``model`` weight-standardised, in place
    (mmdetection's GN+WS models: ConvWS wherever the norm is GN); returns ``model``.

    A Conv2d becomes a :class:`WSConv2d` holding the same parameter objects (names and values
    unchanged); a :class:`DeformConv2d` standardises its weight. Pairs are those that
    :func:`fuse_conv_bn` folds (Sequential order, or a module's ``conv_norm_pairs``).
    """
    for module in list(model.modules()):
        for conv_name, norm_name in _conv_norm_pairs(module):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            if not isinstance(norm, nn.GroupNorm):
                continue
            if isinstance(conv, DeformConv2d):
                conv.weight_standardization = True
            elif type(conv) is nn.Conv2d:
                ws = WSConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                              dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                              padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
                ws.weight = conv.weight
                ws.bias = conv.bias
                setattr(module, conv_name, ws)
    return model


def _folds_into(conv: nn.Module) -> bool:
    """Whether a per-channel scale and shift after ``conv`` can be folded into its weight and bias
    (not for a standardised weight: the standardisation would undo the scale)."""
    if isinstance(conv, DeformConv2d):
        return not conv.weight_standardization
    return isinstance(conv, nn.Conv2d) and not isinstance(conv, WSConv2d)


def is_fused(model: nn.Module) -> bool:
    """Whether ``model`` went through :func:`fuse_conv_bn` (it holds FoldedNorm layers)."""
    return any(isinstance(m, FoldedNorm) for m in model.modules())


@torch.no_grad()
def fuse_conv_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` for inference, with every FrozenBatchNorm2d / BatchNorm2d that directly
    follows a Conv2d or DeformConv2d folded into that conv's weight and bias (not into a weight-standardised conv).
    ``model`` itself is left untouched, unless ``inplace``: then ``model`` is fused and returned, so
    that only one copy of the weights exists (for an owner that never needs the unfused model again,
    e.g. the Predictor, which built it from a file).

    The copy is in eval mode; its folded norms are replaced by :class:`FoldedNorm`, which refuses to
    run in training mode. GroupNorm cannot be folded (its statistics depend on the input) and stays.
    Fusing a fused model folds nothing more. Outputs equal the original's up to float rounding (the
    folded weights round differently from a conv followed by a per-channel scale and shift). The
    copy's state_dict lacks the norm layers: save checkpoints from the original model.

    Raises:
        InputError: if ``model`` is in training mode (a BatchNorm in training mode normalises with
            batch statistics, which cannot be folded; call ``model.eval()`` first).
    """
    if model.training:
        raise InputError(
            "fuse_conv_bn folds norm layers for inference only, but the model is in training mode. Call "
            "model.eval() first (the fused copy cannot be trained; keep training the original model)."
        )
    fused = model.eval() if inplace else copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        for conv_name, norm_name in _conv_norm_pairs(module):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            if _folds_into(conv) and norm is not None and _foldable(norm):
                _fold(conv, norm)
                setattr(module, norm_name, FoldedNorm())
    return fused.eval()


def fuse_for_inference(model: nn.Module, channels_last: bool = True, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` prepared for fast inference: norms folded (:func:`fuse_conv_bn`) and,
    with ``channels_last``, conv weights in channels-last memory format. With ``inplace`` it is
    ``model`` itself that is prepared and returned: one copy of the weights instead of two (each
    folded conv's new weight replaces the old one, so the peak is one layer above the model).

    Convolutions whose weight is channels-last produce channels-last outputs, so the whole
    backbone, FPN and heads then run in NHWC (oneDNN's native CPU layout). Inputs need no change.
    On x86 CPUs with AVX2, large 3x3 convolutions run as NNPACK's Winograd convolution in float32
    eager inference (:func:`_runs_in_nnpack`; outputs within ~1e-5 relative of the direct one's).
    On the 2-core test CPU (1 thread, R50 backbone at 800x1216, torch profiler) folding cut the
    backbone's CPU time from 2.78 s to 2.26 s and channels-last to 2.05 s; wall-clock gains of
    channels-last alone were within the noise of a shared machine, so it can be switched off.
    Detections equal the original model's up to float rounding. ``model`` is left untouched
    unless ``inplace``.
    """
    fused = fuse_conv_bn(model, inplace=inplace)
    _fuse_activations(fused)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
        # Heads that flatten channels-last features (an R-CNN box head) take them in that order.
        for module in fused.modules():
            if hasattr(module, "use_channels_last_rows"):
                module.use_channels_last_rows()
    return fused


def _fuse_activations(model: nn.Module) -> None:
    """In every Sequential, a plain Conv2d followed (after a folded norm, if any) by ReLU or ReLU6
    becomes a :class:`ConvAct2d` and the activation an Identity, so that the pair runs as one
    oneDNN call (or one NNPACK call and an in-place activation). Then the convs are marked as the
    fused model's (``nnpack``: they may take NNPACK, :func:`_runs_in_nnpack`) and, in a Sequential,
    told to hand NCHW maps to a next conv that takes NNPACK too (``hands_nchw``)."""
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for i, name in enumerate(names):
            if type(module._modules[name]) is not nn.Conv2d:
                continue
            j = i + 1
            if j < len(names) and type(module._modules[names[j]]) is FoldedNorm:
                j += 1
            activation = {nn.ReLU: "relu", nn.ReLU6: "relu6"}.get(type(module._modules[names[j]])) if j < len(names) else None
            if activation is not None:
                module._modules[name] = ConvAct2d.from_conv(module._modules[name], activation)
                module._modules[names[j]] = nn.Identity()
    # A 3x3 conv without activation (FPN outputs, dense heads' predictions) that a module calls as
    # ``conv(x)`` becomes a ConvAct2d with none, so that it too may take NNPACK (:func:`_runs_in_nnpack`).
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Conv2d and child.kernel_size == (3, 3) and child.stride == (1, 1):
                setattr(module, name, ConvAct2d.from_conv(child, ""))
    for module in model.modules():
        if type(module) in _ONEDNN_CONVS:
            module.nnpack = True  # only the fused model's convolutions may take NNPACK
    # In a Sequential (a head's tower), a conv NNPACK may take hands its output on in NCHW when the next
    # conv (past modules indifferent to the layout) may take it too: both see the same map size, so
    # they decide alike, and the copies to channels-last and back between them are saved.
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            convs = [_conv_of(layer) for layer in module]
            for i, conv in enumerate(convs):
                j = i + 1
                while j < len(convs) and isinstance(module[j], _LAYOUT_FREE):
                    j += 1
                if (conv is not None and _nnpack_shaped(conv) and j < len(convs) and convs[j] is not None
                        and _nnpack_shaped(convs[j]) and convs[j].in_channels == conv.out_channels):
                    conv.hands_nchw = True


# Modules whose result does not depend on their input's memory format.
_LAYOUT_FREE = (nn.Identity, FoldedNorm, nn.ReLU, nn.GroupNorm)


def _conv_of(layer: nn.Module) -> nn.Module | None:
    """The convolution a Sequential's ``layer`` is, or runs as NNPACK may (a ConvNormAct whose norm
    is folded away or absent: :func:`_runs_in_nnpack`); None for anything else."""
    if isinstance(layer, nn.Conv2d):
        return layer
    if isinstance(layer, ConvNormAct) and (layer.norm is None or type(layer.norm) is FoldedNorm):
        return layer.conv
    return None


def prepare_for_training(model: nn.Module) -> nn.Module:
    """``model`` itself with its conv weights (and every other 4-d tensor) in channels-last memory
    format, so that its convolutions run NHWC forward and backward (oneDNN's native CPU layout and
    cuDNN's preferred one). The parameters stay the same objects (optimizers built before or after
    keep them) and their values are unchanged; only the convolutions' summation order differs. On the
    2-core AVX-512 test CPU a Faster R-CNN R50-FPN training step on 2x3x512x640 took 4.5 s instead of
    5.0 s (``benchmarks/training_kernels.py``)."""
    return model.to(memory_format=torch.channels_last)
