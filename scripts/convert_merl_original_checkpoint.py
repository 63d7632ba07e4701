"""Convert a checkpoint released with MERL (Liu et al., ICML 2024) into a cardiomm checkpoint folder.

Same as ``cardiomm convert merl CHECKPOINT OUT``:

    python scripts/convert_merl_original_checkpoint.py --checkpoint_path resnet18_ckpt.pth \\
        --pytorch_dump_folder_path merl-resnet18 --tokenizer path/to/MedCPT-Query-Encoder
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cardiomm.conversion.merl import MERL_TEXT_MODEL, convert_merl_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, convert, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", required=True,
                        help="MERL .pth file (*_ckpt.pth: whole ECG-text model; *_encoder.pth: ECG encoder)")
    parser.add_argument("--pytorch_dump_folder_path", required=True, help="output folder (new or empty)")
    parser.add_argument("--tokenizer", default=None,
                        help="folder of the report tokenizer (whole models; default: --text_model_name, offline)")
    parser.add_argument("--text_model_name", default=MERL_TEXT_MODEL, help="Hub id of the text tower")
    args = parser.parse_args(argv)
    try:
        result = convert_merl_checkpoint(args.checkpoint_path, args.pytorch_dump_folder_path,
                                         tokenizer=args.tokenizer, text_model_name=args.text_model_name)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
