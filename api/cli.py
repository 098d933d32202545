"""The `pagedmlx` command: `pagedmlx serve [flags]`."""

import argparse
import os
import sys

from api.settings import (
    Settings,
    SettingsError,
    env_name,
    flag_name,
    load_settings,
    options,
    value_type,
)

CONFIG_ENV = env_name("config")


def build_parser() -> argparse.ArgumentParser:
    serve = argparse.ArgumentParser(
        prog="pagedmlx serve",
        description="Serve a model over the OpenAI API. Every flag can also be set by its "
        "environment variable or in a TOML file given with --config (keys as the flag "
        "names, e.g. max_num_seqs = 32); flags beat the environment, which beats the file.",
    )
    _add_serve_options(serve)
    parser = argparse.ArgumentParser(
        prog="pagedmlx",
        description="A local LLM server on MLX: continuous batching, paged prefix cache, "
        "OpenAI API, Prometheus metrics.",
        epilog=serve.format_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve", parents=[serve], add_help=False, help="serve a model (flags below)",
        description=serve.description,
    )
    return parser


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="PATH", help=f"TOML file with settings [env {CONFIG_ENV}]"
    )
    for option in options():
        kind = value_type(option.name)
        shown_default = "" if option.default is None else f"; default {option.default}"
        help_text = f"{option.metadata['help']} [env {env_name(option.name)}{shown_default}]"
        if kind is bool:
            parser.add_argument(
                flag_name(option.name), action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text,
            )
            continue
        parser.add_argument(
            flag_name(option.name), type=kind, default=argparse.SUPPRESS,
            choices=option.metadata["choices"], metavar=option.name.split("_")[-1].upper(),
            help=help_text,
        )


def settings_from_args(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    values = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    return load_settings(values, environ, args.config or environ.get(CONFIG_ENV))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args, dict(os.environ))
    except SettingsError as error:
        print(f"pagedmlx: error: {error}", file=sys.stderr)
        return 2
    # Re-execs the process with OpenBLAS preloaded, so it must run before mlx is imported.
    from engine.blas import ensure_blas_preloaded

    ensure_blas_preloaded()
    from api.server import serve

    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
