"""The ``ftmagic`` command: models, validate, preview, train, runs, demo and server.

Every subcommand calls the same functions as the Python API. A problem the user can fix (an
``FtmagicError``) prints its message to stderr and exits with status 2, without a traceback.
The ``train``, ``validate`` and ``preview`` commands take a YAML config plus one ``--field-name``
option per ``RunConfig`` field, whose help is the field's own help text.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ftmagic.config import RunConfig, TaskType, schema_fields, value_type
from ftmagic.errors import ConfigError, FtmagicError

GROUP_TITLES = {
    "run": "run fields",
    "data": "data fields",
    "method": "method fields (full or LoRA)",
    "optim": "optimisation fields",
    "backend": "backend fields",
}
VERBOSE_HELP = "show third-party progress bars, warnings and logs (default: Python logging only)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(unknown_options_message(unknown))
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except FtmagicError as err:
        print(f"ftmagic: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ftmagic: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head`: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's flush quiet
        return 0


def unknown_options_message(unknown: list[str]) -> str:
    """``unrecognized arguments`` with a "did you mean" for misspelled field options."""
    known = ["--" + name.replace("_", "-") for name in RunConfig.field_names()]
    known += ["--run-id", "--resume", "--max-errors", "--all", "--limit", "--host", "--port"]
    parts = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=")[0], known, n=1, cutoff=0.6)
        parts.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    return "unrecognized arguments: " + " ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftmagic",
        description="Fine-tune foundation models: the same workflow as the notebook.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    models = commands.add_parser("models", help="list the model catalog")
    models.add_argument("--all", action="store_true", help="include retired models")
    models.set_defaults(handler=cmd_models)

    validate = _config_command(commands, "validate", "check the data and size the run")
    validate.add_argument("--max-errors", type=int, default=20, help="errors to list (default 20)")
    validate.set_defaults(handler=cmd_validate)

    preview = _config_command(commands, "preview", "show the first training examples as tokens")
    preview.add_argument("-n", type=int, default=3, help="examples to show (default 3)")
    preview.set_defaults(handler=cmd_preview)

    train = _config_command(commands, "train", "train (validates first when validate_inputs)")
    train.add_argument("--run-id", help="the MLflow run id to use or resume")
    train.add_argument("--resume", action="store_true", help="resume --run-id from its checkpoint")
    train.set_defaults(handler=cmd_train)

    demo = commands.add_parser("demo", help="train a tiny model on bundled data, end to end")
    demo.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    demo.set_defaults(handler=cmd_demo)

    runs = commands.add_parser("runs", help="list runs, newest first")
    runs.add_argument("--limit", type=int, default=20, help="runs to list (default 20)")
    runs.add_argument("--experiment", help="only this experiment")
    runs.set_defaults(handler=cmd_runs)

    server = commands.add_parser("server", help="serve the run store and UI over HTTP")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    server.add_argument("--store", help="folder of the run store (default: the tracking URI)")
    server.add_argument(
        "--allow-remote", action="store_true", help="allow a --host other than localhost"
    )
    server.set_defaults(handler=cmd_server)
    return parser


def _config_command(commands: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help,
        description=f"{help[0].upper()}{help[1:]}. Fields given as options override the YAML.",
    )
    parser.add_argument("config", nargs="?", help="a run config YAML file")
    add_field_options(parser)
    return parser


def add_field_options(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name VALUE`` option per RunConfig field, grouped, with the field's help."""
    groups: dict[str, Any] = {}
    for name, prop in schema_fields().items():
        group_name = prop.get("group", "run")
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(GROUP_TITLES.get(group_name, group_name))
        default = prop.get("default")
        text = prop["description"] + (f" (default: {default})" if default not in ("", None) else "")
        flag = {"nargs": "?", "const": "true"} if name == "verbose" else {}
        groups[group_name].add_argument(
            "--" + name.replace("_", "-"),
            dest=f"field_{name}",
            metavar="VALUE",
            default=argparse.SUPPRESS,
            help=text.replace("%", "%%"),
            **flag,  # type: ignore[arg-type]
        )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The YAML config (if any) with the ``--field`` options applied on top."""
    overrides = {}
    for key, raw in vars(args).items():
        if key.startswith("field_"):
            name = key[len("field_") :]
            overrides[name] = parse_value(raw, name)
    if args.config is None and not overrides:
        raise ConfigError("<config>", "no config given", suggestion="pass a YAML file or --model")
    base = RunConfig.from_file(args.config).to_dict() if args.config else {}
    return RunConfig.from_dict({**base, **overrides})


def parse_value(raw: str, name: str) -> Any:
    """A command-line value as YAML (numbers, booleans, lists), but text fields stay text."""
    kind, nullable = value_type(schema_fields()[name])
    if raw.strip().lower() in ("null", "~", "none") and nullable:
        return None
    if kind == "string":
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


# --- commands -----------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from ftmagic import api

    print(api.get_models(include_retired=args.all))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ftmagic.data.validate import validate
    from ftmagic.train.calibration import measure

    report = validate(config_from_args(args), max_errors=args.max_errors, measure=measure)
    print(report)
    return 0 if report.ok else 1


def cmd_preview(args: argparse.Namespace) -> int:
    from ftmagic import api

    config = config_from_args(args)
    for number, (where, example) in enumerate(_first_examples(config, args.n), start=1):
        shown = api.preview(
            config.model,
            example,
            task_type=config.task_type,
            context_length=config.context_length,
        )
        print(f"--- example {number} ({where}) ---")
        print(shown)
    return 0


def _first_examples(config: RunConfig, count: int) -> list[tuple[str, Any]]:
    from itertools import islice

    from ftmagic.data.readers import iter_records, iter_text_files, looks_like_record_source

    path = config.train_data_path
    if not path:
        raise ConfigError("train_data_path", "is not set", suggestion="set it in the YAML")
    if config.task_type == TaskType.CONTINUED_PRETRAIN and not looks_like_record_source(path):
        return list(islice(iter_text_files(path), count))
    return [(f"{r.source}:{r.line}", r.data) for r in islice(iter_records(path), count)]


def cmd_train(args: argparse.Namespace) -> int:
    from ftmagic.train.cli import train_command

    if args.resume and not args.run_id:
        raise ConfigError("--resume", "needs --run-id", suggestion="see `ftmagic runs` for ids")
    return train_command(config_from_args(args), run_id=args.run_id, resume=args.resume)


def cmd_demo(args: argparse.Namespace) -> int:
    from ftmagic import quiet
    from ftmagic.train.cli import demo_command

    quiet.set_verbose(args.verbose)  # before the demo loads the model to score it
    quiet.apply(load=("transformers",))
    return demo_command(verbose=args.verbose)


def cmd_runs(args: argparse.Namespace) -> int:
    from ftmagic import api

    runs = api.list(experiment_path=args.experiment, limit=args.limit)
    rows = [_run_row(run) for run in runs]
    print(format_table(["run_id", "name", "status", "model", "created"], rows))
    return 0


def _run_row(run: Any) -> list[str]:
    names = ("run_id", "name", "status", "config.model", "created")
    return [_cell(_read(run, name)) for name in names]


def _read(value: Any, dotted: str) -> Any:
    """An attribute path of a run; a run whose record is incomplete shows '?' there."""
    try:
        for part in dotted.split("."):
            value = getattr(value, part)
    except Exception:  # one unreadable run must not hide the others
        return "?"
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M"))
    return str(value)


def cmd_server(args: argparse.Namespace) -> int:
    from ftmagic.runners.server import serve

    store = str(Path(args.store).resolve()) if args.store else None
    return serve(host=args.host, port=args.port, store=store, allow_remote=args.allow_remote)


def format_table(columns: list[str], rows: list[list[str]]) -> str:
    """A plain left-aligned text table."""
    if not rows:
        return "(none)"
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
