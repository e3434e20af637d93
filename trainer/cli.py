"""``trainer pretrain | eval | export | probe``: flags come 1:1 from the dataclasses in ``trainer.config``.

User errors (TrainerError, and usage errors) print one line on stderr and exit with status 2.
A run stopped by SIGTERM / SIGINT (after writing its checkpoint) exits with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import sys

from .config import (EvalConfig, ExportConfig, PretrainConfig, ProbeConfig, TrainerError, add_arguments,
                     from_namespace)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line plus a pointer to ``--help`` (not the whole usage), exit status 2.
    Sub-command parsers are of the same class (argparse creates them with the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="trainer", description="CroCo-Man pre-training on pairgen shards")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = {}
    for name, cls, text in (("pretrain", PretrainConfig, "pre-train (resumes from OUT/checkpoint.pt)"),
                            ("eval", EvalConfig, "masked-reconstruction loss per kind, with / without reference"),
                            ("export", ExportConfig, "encoder weights for fine-tuning"),
                            ("probe", ProbeConfig, "train a small head on the frozen encoder (keypoints, silhouette, "
                                                   "depth) and score it on held-out shards (docs/evaluation.md)")):
        p = sub.add_parser(name, help=text, description=text)
        add_arguments(p, cls)
        p.set_defaults(config_cls=cls)
        parser.commands[name] = p
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the sub-command, whose --help lists its flags
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    cfg = from_namespace(args.config_cls, args)
    try:
        if args.command == "pretrain":
            from .loop import main_entry

            stopped = main_entry(cfg).get("stopped")
            if stopped:
                return 128 + stopped
        elif args.command == "eval":
            from .evaluate import evaluate, format_results

            cfg.validate()
            print(format_results(evaluate(cfg)))
        elif args.command == "probe":
            from .probe import main as probe_main

            probe_main(cfg)
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
