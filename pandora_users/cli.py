"""The `pandora-users` command line (SPEC §11)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pandora_users import __version__
from pandora_users.config.errors import ConfigError
from pandora_users.fatal import Fatal


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pandora-users", description="The user service of Pandora Exchange.")
    parser.add_argument("--version", action="version", version=f"pandora-users {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run every listener and worker in one process (embedded servers in dev)")
    sub.add_parser("api", help="run the public HTTP listener only")
    sub.add_parser("admin", help="run the admin HTTP listener only")
    sub.add_parser("rpc", help="run the gRPC listener only")
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
    _audit_parsers(sub)
    return parser


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer ≥ {minimum}")
        return int(text)

    return parse


def _audit_parsers(sub: Any) -> None:
    """The auditor's commands: history, events, erase."""
    history = sub.add_parser("history", help="print a user's published events (as the admin history endpoint)")
    history.add_argument("user_id", metavar="USER_ID")
    history.add_argument("--order", choices=("asc", "desc"), default="asc")
    history.add_argument("--limit", type=_count(1), default=None, help="at most N events (default: all)")
    history.add_argument("--json", action="store_true", help="JSON Lines, one EventDTO per line")
    events = sub.add_parser("events", help="print published events after a position, from the event store")
    events.add_argument("--after", type=_count(0), default=0, metavar="N", help="events with a position > N")
    events.add_argument("--limit", type=_count(1), default=None, help="default 100 (no limit with --follow)")
    events.add_argument("--type", default=None, metavar="T[,T...]", help="only these event types")
    events.add_argument("--follow", action="store_true", help="keep printing new events until interrupted")
    events.add_argument("--json", action="store_true", help="JSON Lines, one EventDTO per line")
    erase = sub.add_parser("erase", help="erase a user for good (GDPR crypto-shredding), actor cli")
    erase.add_argument("user_id", metavar="USER_ID")
    erase.add_argument("--reason", required=True, help="why (stored in clear: no personal data)")
    erase.add_argument("--yes", action="store_true", help="do not ask for confirmation")


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
    if args.command in ("serve", "api"):
        # Before anything imports prometheus_client: the HTTP workers' counts must land in one directory.
        from pandora_users.observability.multiproc import ensure_shared_dir

        ensure_shared_dir()
    return run_guarded(lambda: _dispatch(args))


def run_guarded(run: Callable[[], int]) -> int:
    """Run a command; configuration and fatal errors become their message on stderr and their exit code."""
    try:
        return run()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except Fatal as exc:
        print(exc.message, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        if not _database_unavailable(exc):
            raise
        print(f"error: PostgreSQL unavailable: {_first_line(exc)}", file=sys.stderr)
        return 4


def _database_unavailable(exc: BaseException) -> bool:
    """A connection-level PostgreSQL failure (refused, too many clients, lost), from any of our drivers."""
    import asyncpg
    import psycopg
    from eventsourcing.persistence import OperationalError

    connection_errors = (psycopg.OperationalError, OperationalError, asyncpg.PostgresConnectionError)
    too_many = (asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError)
    return isinstance(exc, connection_errors + too_many)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _dispatch(args: argparse.Namespace) -> int:
    from pandora_users import commands_cli

    if args.command in ("serve", "api", "admin", "rpc"):
        from pandora_users.serve import ROLES, serve

        return serve(ROLES[args.command])
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
    if args.command in ("history", "events", "erase"):
        return _audit(args)
    return 2


def _audit(args: argparse.Namespace) -> int:
    from pandora_users import audit_cli

    if args.command == "history":
        return asyncio.run(audit_cli.history(args.user_id, order=args.order, limit=args.limit, as_json=args.json))
    if args.command == "events":
        return audit_cli.events(
            after=args.after, limit=args.limit, types=args.type, follow=args.follow, as_json=args.json
        )
    return asyncio.run(audit_cli.erase(args.user_id, reason=args.reason, yes=args.yes, confirm=input))


if __name__ == "__main__":
    sys.exit(main())
