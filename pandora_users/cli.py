"""The `pandora-users` command line (SPEC §11)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable, Sequence

from pandora_users import __version__
from pandora_users.config.errors import ConfigError
from pandora_users.fatal import Fatal


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pandora-users", description="The user service of Pandora Exchange.")
    parser.add_argument("--version", action="version", version=f"pandora-users {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run every listener and worker in one process (embedded servers in dev)")
    migrate = sub.add_parser("migrate", help="create or upgrade every schema object")
    migrate.add_argument("--check", action="store_true", help="change nothing; exit 5 unless the schema is current")
    project = sub.add_parser("project", help="run projectors (one active instance each; others stand by)")
    project.add_argument("names", nargs="+", metavar="NAME", help="users, event_log, revocations, forwarder or all")
    rebuild = sub.add_parser("rebuild", help="rebuild read models beside the live ones, then swap atomically")
    rebuild.add_argument("names", nargs="+", metavar="NAME", help="users, event_log or all")
    cleanup = sub.add_parser("audit-cleanup", help="delete expired access-log rows and old session/link records")
    cleanup.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    admin = sub.add_parser("create-admin", help="create the first administrator (password on stdin or prompted)")
    admin.add_argument("--email", required=True)
    admin.add_argument("--first-name", default="Admin")
    admin.add_argument("--last-name", default="User")
    admin.add_argument("--promote", action="store_true", help="make an existing live user an admin")
    return parser


def read_password(prompt: Callable[[str], str] = getpass.getpass) -> str:
    """The first line of stdin when it is not a terminal; otherwise prompted twice without echo."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    first, second = prompt("Password: "), prompt("Repeat password: ")
    if first != second:
        raise Fatal(2, "error: passwords do not match")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pandora_users import commands_cli

    try:
        if args.command == "serve":
            from pandora_users.serve import serve

            return serve()
        if args.command == "migrate":
            return commands_cli.migrate(check=args.check)
        if args.command == "project":
            return commands_cli.project(args.names)
        if args.command == "rebuild":
            return commands_cli.rebuild(args.names)
        if args.command == "audit-cleanup":
            return asyncio.run(commands_cli.audit_cleanup(dry_run=args.dry_run))
        if args.command == "create-admin":
            return asyncio.run(
                commands_cli.create_admin(
                    email=args.email,
                    first_name=args.first_name,
                    last_name=args.last_name,
                    promote=args.promote,
                    password_source=read_password,
                )
            )
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except Fatal as exc:
        print(exc.message, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
