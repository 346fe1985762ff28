"""``isacir cycle``: the learning loop (train on new verdicts, gate, canary, promote or roll back)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import FEEDBACK_DB_HELP, JSON_ALWAYS_HELP, app, emit_json, err

cycle_app = typer.Typer(
    help="Learning cycles: train an adapter on new verdicts, gate it, serve it as a canary, and promote it "
    "or roll it back on the evidence of live traffic, as a policy file says.",
    no_args_is_help=True,
)
app.add_typer(cycle_app, name="cycle")

FEEDBACK_HELP = FEEDBACK_DB_HELP + " Default: GALLERY/feedback.sqlite."
POLICY_HELP = "The cycle policy (TOML: [trigger], [adapt], [rollout], [notify]; see docs/operations/cycles.md)."


def _cycle(gallery: Path, policy: Path, feedback: Optional[str], registry: Optional[Path], progress: bool):
    from ..audit import cli_actor
    from ..cycle import CyclePolicy, LearningCycle
    from ..registry import Registry
    from .feedback import open_feedback_db

    store = open_feedback_db(feedback or gallery / "feedback.sqlite")
    reg = Registry(registry) if registry is not None else Registry.of_gallery(gallery)
    return LearningCycle(gallery, CyclePolicy.from_toml(policy), store, reg, actor=cli_actor(), progress=progress)


@cycle_app.command("run")
def cycle_run(
    gallery: Path = typer.Option(..., help="The gallery whose registry and feedback log the cycle works on."),
    policy: Path = typer.Option(..., help=POLICY_HELP),
    feedback: Optional[str] = typer.Option(None, "--feedback-db", help=FEEDBACK_HELP),
    registry: Optional[Path] = typer.Option(None, help="Registry folder (default: GALLERY/models)."),
    start: bool = typer.Option(False, "--start", help="Start a cycle now, whatever the trigger says (needs --reason)."),
    reason: str = typer.Option("", help="Why, for the audit log."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Do what the open cycle needs next (train, gate, canary, decide), or start one when the
    policy's trigger holds. Safe to run from cron: one cycle at a time, and a cycle killed halfway
    resumes where it stopped."""
    from ..errors import IsacirError

    if start and not reason.strip():
        raise IsacirError("--start needs --reason: the audit log records why a cycle started by hand")
    result = _cycle(gallery, policy, feedback, registry, progress).tick(start=start, reason=reason)
    cycle = result["cycle"]
    if cycle is None:
        err.print(f"no cycle: {result['reason']}", highlight=False)
    else:
        last = cycle["steps"][-1]
        detail = cycle.get("outcome") or (cycle.get("evidence") or {}).get("reason") or last.get("reason", "")
        err.print(
            f"cycle {cycle['id']} ({cycle['candidate']}): {cycle['state']}" + (f": {detail}" if detail else ""),
            highlight=False,
        )
    emit_json(result)


@cycle_app.command("offer")
def cycle_offer(
    adapter: Path = typer.Option(
        ..., help="An adapter folder trained elsewhere (isacir adapt) for the active version."
    ),
    reason: str = typer.Option(..., help="Why, for the audit log."),
    gallery: Path = typer.Option(..., help="The gallery whose registry and feedback log the cycle works on."),
    policy: Path = typer.Option(..., help=POLICY_HELP),
    feedback: Optional[str] = typer.Option(None, "--feedback-db", help=FEEDBACK_HELP),
    registry: Optional[Path] = typer.Option(None, help="Registry folder (default: GALLERY/models)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Begin a cycle with an adapter trained by hand: no training, the same gate, canary and decision."""
    result = _cycle(gallery, policy, feedback, registry, False).offer(adapter, reason)
    cycle = result["cycle"]
    err.print(f"cycle {cycle['id']} ({cycle['candidate']}): {cycle['state']}", highlight=False)
    emit_json(result)


@cycle_app.command("status")
def cycle_status(
    gallery: Path = typer.Option(..., help="The gallery whose registry and feedback log the cycle works on."),
    policy: Path = typer.Option(..., help=POLICY_HELP),
    feedback: Optional[str] = typer.Option(None, "--feedback-db", help=FEEDBACK_HELP),
    registry: Optional[Path] = typer.Option(None, help="Registry folder (default: GALLERY/models)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """The last cycle, the new verdicts since the active version, and whether a cycle would start now."""
    status = _cycle(gallery, policy, feedback, registry, False).status()
    last = status["last"]
    err.print(
        f"active: {status['active']}; new judged searches: {status.get('new_verdicts', '–')}; "
        + ("a cycle would start now" if status["trigger"] is None else f"no cycle yet: {status['trigger']}")
        + (f"; last cycle {last['id']}: {last['state']}" if last else ""),
        highlight=False,
    )
    emit_json(status)
