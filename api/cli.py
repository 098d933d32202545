"""The `pagedmlx` command: `pagedmlx serve [flags]`, `pagedmlx warm FILE`, `pagedmlx claude-env`,
`pagedmlx claude`."""

import argparse
import os
import sys

from api.api_keys import load_api_keys
from api.claude_launcher import CLAUDE_SERVE_ARGS, print_claude_env, run_claude
from api.settings import (
    Settings,
    SettingsError,
    env_name,
    flag_name,
    load_settings,
    options,
    value_type,
)
from api.warm import WarmFileError, load_warm_requests

CONFIG_ENV = env_name("config")


def build_parser() -> argparse.ArgumentParser:
    serve = argparse.ArgumentParser(
        prog="pagedmlx serve",
        description="Serve a model over the OpenAI and Anthropic APIs. Every flag can also be set by its "
        "environment variable or in a TOML file given with --config (keys as the flag "
        "names, e.g. max_num_seqs = 32); flags beat the environment, which beats the file.",
    )
    _add_serve_options(serve)
    parser = argparse.ArgumentParser(
        prog="pagedmlx",
        description="A local LLM server on MLX: continuous batching, paged prefix cache, "
        "OpenAI and Anthropic APIs, tool calling, Prometheus metrics.",
        epilog=serve.format_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve", parents=[serve], add_help=False, help="serve a model (flags below)",
        description=serve.description,
    )
    warm = commands.add_parser(
        "warm", parents=[serve], add_help=False,
        help="prefill the prompts of the request bodies in FILE into the prefix cache's disk tier, "
        "so that the next `pagedmlx serve` hits them, then exit; it serves on --port meanwhile "
        "(pick a free one if a server runs)",
        description="Start a server, send it the request bodies in FILE (a JSON object, a JSON "
        "list or JSONL; see --warm) for one token each, and exit once they are done. The "
        "prompts' KV blocks go to the disk tier (--disk-cache-gb, --disk-cache-dir), so the "
        "next `pagedmlx serve` with the same model and flags hits them. It listens on --port "
        "meanwhile: pick a free one if a server runs.",
    )
    warm.add_argument("warm", metavar="FILE", help="the request bodies to prefill")
    commands.add_parser(
        "claude-env", parents=[serve], add_help=False,
        help="print the exports that point Claude Code at the server (--host, --port, --api-key)",
    )
    claude = commands.add_parser(
        "claude", parents=[serve], add_help=False,
        help="run an installed `claude` against the server, starting one with "
        f"{' '.join(CLAUDE_SERVE_ARGS)} (plus the flags given) when none answers; "
        "arguments after -- go to claude",
    )
    claude.add_argument("claude_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="PATH", help=f"TOML file with settings [env {CONFIG_ENV}]"
    )
    for option in options():
        kind = value_type(option.name)
        shown_default = "" if option.default in (None, ()) else f"; default {option.default}"
        help_text = f"{option.metadata['help']} [env {env_name(option.name)}{shown_default}]"
        if kind is bool:
            parser.add_argument(
                flag_name(option.name), action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text,
            )
            continue
        if kind is tuple:
            parser.add_argument(
                flag_name(option.name), action="append", default=argparse.SUPPRESS,
                metavar=option.name.split("_")[-1].upper(), help=help_text,
            )
            continue
        parser.add_argument(
            flag_name(option.name), type=kind, default=argparse.SUPPRESS,
            choices=option.metadata["choices"], metavar=option.name.split("_")[-1].upper(),
            help=help_text,
        )


def settings_from_args(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
              if k not in ("command", "config", "claude_args")}
    return load_settings(values, environ, args.config or environ.get(CONFIG_ENV))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args, dict(os.environ))
    except SettingsError as error:
        print(f"pagedmlx: error: {error}", file=sys.stderr)
        return 2
    base_url = f"http://{settings.host}:{settings.port}"
    if args.command in ("claude-env", "claude"):
        try:
            client_key = next(iter(load_api_keys(settings.api_key, settings.api_key_file)), None)
        except ValueError as error:
            print(f"pagedmlx: error: {error}", file=sys.stderr)
            return 2
    if args.command == "claude-env":
        return print_claude_env(base_url, client_key)
    if args.command == "claude":
        claude_args = args.claude_args[1:] if args.claude_args[:1] == ["--"] else args.claude_args
        serve_flags = argv[1:len(argv) - len(args.claude_args)]
        return run_claude(base_url, client_key, [*CLAUDE_SERVE_ARGS, *serve_flags],
                          claude_args)
    # Re-execs the process with OpenBLAS preloaded, so it must run before mlx is imported.
    from engine.blas import ensure_blas_preloaded

    ensure_blas_preloaded()
    if args.command == "warm":
        try:
            load_warm_requests(settings.warm)
        except WarmFileError as error:
            print(f"pagedmlx: error: {error}", file=sys.stderr)
            return 2
        if settings.disk_cache_gb == 0:
            print("pagedmlx: warning: --disk-cache-gb is 0: without the disk tier the warmed "
                  "prefix cache is lost when `warm` exits", file=sys.stderr)
    from api.server import serve

    return serve(settings, exit_after_warm=args.command == "warm")


if __name__ == "__main__":
    sys.exit(main())
