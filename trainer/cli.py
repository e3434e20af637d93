"""``trainer pretrain | eval | export``: flags come 1:1 from the dataclasses in ``trainer.config``.

User errors (TrainerError) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from .config import EvalConfig, ExportConfig, PretrainConfig, TrainerError, add_arguments, from_namespace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description="CroCo-Man pre-training on pairgen shards")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls, text in (("pretrain", PretrainConfig, "pre-train (resumes from OUT/checkpoint.pt)"),
                            ("eval", EvalConfig, "masked-reconstruction loss per kind, with / without reference"),
                            ("export", ExportConfig, "encoder weights for fine-tuning")):
        p = sub.add_parser(name, help=text, description=text)
        add_arguments(p, cls)
        p.set_defaults(config_cls=cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = from_namespace(args.config_cls, args)
    try:
        if args.command == "pretrain":
            from .loop import main_entry

            main_entry(cfg)
        elif args.command == "eval":
            from .evaluate import evaluate, format_results

            cfg.validate()
            print(format_results(evaluate(cfg)))
        else:
            from .export import export

            for path in export(cfg):
                print(path)
    except TrainerError as exc:
        print(f"trainer: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
