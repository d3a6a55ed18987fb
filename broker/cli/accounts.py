"""``lanner users``, ``lanner tokens`` and ``lanner jobs``: accounts of the API, made by an
operator, and the background jobs of its users.

The first admin can only be made here (the API makes users only for an admin's token). A token's
text is printed once, when it is issued, and is kept nowhere.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from broker.cli.common import clean_errors, console, out
from broker.config import get_settings
from broker.exceptions import ConflictError, LannerError, NotFoundError

if TYPE_CHECKING:
    from broker.factory import Factory
    from broker.storage.accounts import AccountStore

users = typer.Typer(help="Users of the API (add, list, set-tier, disable, enable).",
                    no_args_is_help=True)
tokens = typer.Typer(help="Bearer tokens of the API's users (issue, list, revoke).",
                     no_args_is_help=True)


def _store() -> tuple[Factory, AccountStore]:
    from broker.factory import Factory  # noqa: PLC0415

    factory = Factory(get_settings())
    return factory, factory.accounts


@users.command("add")
@clean_errors
def users_add(
    name: Annotated[str, typer.Argument(help="A lower-case letter, then letters, digits, _.")],
    tier: Annotated[str, typer.Option("--tier", help="user, power or admin.")] = "user",
) -> None:
    """Make a user."""
    factory, store = _store()
    try:
        user = store.add_user(name, tier)
    except (ValueError, ConflictError) as exc:
        raise LannerError(str(exc)) from None
    finally:
        factory.close()
    out.print(f"user {user.name} ({user.tier.value}) made; issue a token with "
              f"`lanner tokens issue {user.name}`", highlight=False)


@users.command("list")
@clean_errors
def users_list() -> None:
    """One line per user: name, tier, since when, disabled or not."""
    factory, store = _store()
    try:
        found = store.list_users()
    finally:
        factory.close()
    if not found:
        out.print("no users", highlight=False)
    for user in found:
        state = " disabled" if user.disabled else ""
        out.print(f"{user.name} {user.tier.value} since {user.created_at:%Y-%m-%d %H:%M}Z{state}",
                  highlight=False)


@users.command("set-tier")
@clean_errors
def users_set_tier(
    name: Annotated[str, typer.Argument(help="User name.")],
    tier: Annotated[str, typer.Argument(help="user, power or admin.")],
) -> None:
    """Change a user's tier (and so its limits)."""
    factory, store = _store()
    try:
        user = store.set_tier(name, tier)
    except (ValueError, NotFoundError) as exc:
        raise LannerError(str(exc)) from None
    finally:
        factory.close()
    out.print(f"user {user.name} is now {user.tier.value}", highlight=False)


def _set_disabled(name: str, disabled: bool) -> None:
    factory, store = _store()
    try:
        store.set_disabled(name, disabled)
    except NotFoundError as exc:
        raise LannerError(str(exc)) from None
    finally:
        factory.close()
    out.print(f"user {name} {'disabled: its tokens are refused' if disabled else 'enabled'}",
              highlight=False)


@users.command("disable")
@clean_errors
def users_disable(name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Refuse every token of a user (they stay listed; `enable` accepts them again)."""
    _set_disabled(name, True)


@users.command("enable")
@clean_errors
def users_enable(name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Accept a disabled user's tokens again."""
    _set_disabled(name, False)


@tokens.command("issue")
@clean_errors
def tokens_issue(
    user: Annotated[str, typer.Argument(help="The user the token acts for.")],
    label: Annotated[str | None, typer.Option("--label", help="What it is for.")] = None,
    role: Annotated[str | None, typer.Option(
        "--role", help="annotator: the token may post annotations of objects.")] = None,
) -> None:
    """Issue a token and print it, this once: only a hash of it is kept."""
    factory, store = _store()
    try:
        token, info = store.issue_token(user, label, role=role)
    except (ValueError, NotFoundError) as exc:
        raise LannerError(str(exc)) from None
    finally:
        factory.close()
    out.print(f"token {info.token_id} for {user} (shown once; send it as "
              f"'Authorization: Bearer <token>'):", highlight=False)
    out.print(token.text, highlight=False, soft_wrap=True)


@tokens.command("list")
@clean_errors
def tokens_list(user: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """A user's tokens: id, label, issued, revoked (never the tokens themselves)."""
    factory, store = _store()
    try:
        store.get_user(user)
        found = store.tokens(user)
    except NotFoundError as exc:
        raise LannerError(str(exc)) from None
    finally:
        factory.close()
    if not found:
        out.print(f"user {user} has no tokens", highlight=False)
    for info in found:
        state = (f"revoked {info.revoked_at:%Y-%m-%d %H:%M}Z" if info.revoked_at else "active")
        role = f" role {info.role}" if info.role else ""
        out.print(f"{info.token_id} {info.label or '-'} issued "
                  f"{info.created_at:%Y-%m-%d %H:%M}Z {state}{role}", highlight=False)


@tokens.command("revoke")
@clean_errors
def tokens_revoke(token_id: Annotated[str, typer.Argument(help="The token's id.")]) -> None:
    """Revoke a token: it is refused from the next request on."""
    factory, store = _store()
    try:
        info = store.revoke(token_id)
    except NotFoundError as exc:
        raise LannerError(str(exc)) from None
    finally:
        factory.close()
    out.print(f"token {info.token_id} of {info.user_name} revoked", highlight=False)


jobs = typer.Typer(help="Background jobs: the retroactive matches of watchlists and watchmaps.",
                   no_args_is_help=True)


@jobs.command("list")
@clean_errors
def jobs_list(user: Annotated[str, typer.Argument(help="Whose jobs.")]) -> None:
    """A user's jobs, newest first: id, kind, target, state, progress, hits."""
    from broker.factory import Factory  # noqa: PLC0415

    factory = Factory(get_settings())
    try:
        found = factory.jobs.of(user)
    finally:
        factory.close()
    if not found:
        out.print(f"user {user} has no jobs", highlight=False)
    for job in found:
        out.print(f"{job.job_id} {job.kind} {job.target_id} v{job.target_version} {job.state} "
                  f"{job.done}/{job.total} objects, {job.hits} hits", highlight=False)


@jobs.command("show")
@clean_errors
def jobs_show(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Show a progress bar until "
                                         "the job ends.")] = False,
) -> None:
    """A job's state and progress; with --follow, a progress bar until it ends."""
    from rich.progress import BarColumn, Progress, TextColumn  # noqa: PLC0415

    from broker.factory import Factory  # noqa: PLC0415

    factory = Factory(get_settings())
    try:
        job = factory.jobs.get(job_id, None)
        if follow and job.state in ("queued", "running"):
            with Progress(TextColumn("{task.description}"), BarColumn(),
                          TextColumn("{task.completed:,.0f}/{task.total:,.0f} objects"),
                          console=console) as bar:
                task = bar.add_task(f"job {job_id} ({job.kind})", total=max(job.total, 1))
                while job.state in ("queued", "running"):
                    time.sleep(0.5)
                    job = factory.jobs.get(job_id, None)
                    bar.update(task, completed=job.done, total=max(job.total, 1),
                               description=f"job {job_id} ({job.state}, {job.hits} hits)")
    except NotFoundError as exc:
        raise LannerError(str(exc)) from None
    finally:
        factory.close()
    out.print(f"job {job.job_id} {job.kind} of {job.target_id} v{job.target_version}: "
              f"{job.state}, {job.done:,}/{job.total:,} objects matched, {job.hits:,} hits"
              + (f"; error: {job.error}" if job.error else ""), highlight=False)
