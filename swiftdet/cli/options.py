"""Options several verbs share, defined once."""
from __future__ import annotations

import argparse

from swiftdet.model.detector import PRECISIONS


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16`` of the verbs that run inference (eval, predict, benchmark)."""
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="inference precision: fp32 (default) or bf16 (bfloat16 autocast: convolutions and matrix "
                             "products in bf16, boxes and scores in float32; needs native bf16: a CPU with AVX512-BF16 "
                             "or AMX, or a GPU that has it); for int8, export the model with swiftdet export "
                             "--quantize int8 --calib IMAGES; then run it with --backend onnxruntime --model FILE")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """``--compile`` of the verbs that run inference (eval, predict, benchmark)."""
    parser.add_argument("--compile", action="store_true",
                        help="run the detector's network (its tensor-only core) through torch.compile; pre- and "
                             "post-processing stay eager. Off by default: the first images (each new image size) are "
                             "slow, tens of seconds to minutes, while it compiles; needs a C++ compiler on the CPU "
                             "(g++ or clang++) and triton on a GPU. Not with --backend onnxruntime|openvino|torchscript")
