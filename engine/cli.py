"""The `rollout` command: thin wiring from arguments to the engine and back to the terminal.

Data (plans, status, JSON) goes to stdout; messages go to stderr. Every error the engine raises
on purpose is printed as one clear message with its exit code, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from engine.errors import SafeRolloutError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Gated, declarative rollouts of ML model versions behind online endpoints.",
)

EXIT_CHANGES = 2
_changes_pending = False  # set when a plan exits 2 on purpose
EXIT_ROLLED_BACK = 3


class Format(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


Target = Annotated[
    str, typer.Argument(help="A manifest file, or an endpoint named by a manifest in rollouts/.")
]
FormatOption = Annotated[Format, typer.Option("--format", help="Output format.")]


_github: bool | None = None  # `--github/--no-github`; None: decided by GITHUB_ACTIONS


def say(message: str) -> None:
    """A message for the person at the terminal (stderr, never mixed with data)."""
    print(message, file=sys.stderr, flush=True)


def report_error(error: SafeRolloutError) -> None:
    """The error as a message, and in GitHub Actions also as annotations on the manifest."""
    from engine.annotations import error_annotations, is_github_actions

    github = _github if _github is not None else is_github_actions(os.environ)
    if github:
        workspace = Path(os.environ.get("GITHUB_WORKSPACE") or Path.cwd())
        for line in error_annotations(error, Path.cwd(), workspace):
            print(line, file=sys.stderr, flush=True)
    say(f"error: {error}")


def fail(message: str, code: int = 1) -> NoReturn:
    say(f"error: {message}")
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("azure", "azure.core.pipeline.policies.http_logging_policy", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
    github: Annotated[
        bool | None,
        typer.Option(
            "--github/--no-github",
            help="Report manifest problems as GitHub annotations (default: when GITHUB_ACTIONS).",
        ),
    ] = None,
) -> None:
    global _github
    _github = github
    _setup_logging(verbose)


# ---------------------------------------------------------------------------------------------
# Resolving what to act on


def _load(target: str):  # -> LoadedManifest
    from engine.loader import load_manifest, load_paths

    path = Path(target)
    if path.is_file():
        return load_manifest(path)
    folder = Path("rollouts")
    if path.suffix in (".yaml", ".yml") or not folder.is_dir():
        fail(f"no manifest file {target}")
    matches = [m for m in load_paths([folder]) if m.rollout.spec.target.endpoint == target]
    if not matches:
        fail(f"{target} is neither a manifest file nor an endpoint named in {folder}/")
    return matches[0]


def _open(loaded, *, announce: bool = False):  # -> (Reconciler, provider)
    from engine.reconcile import Reconciler, SystemClock, default_holder, desired_from

    provider = open_provider(loaded, announce=announce)
    return Reconciler(desired_from(loaded), provider, SystemClock(), default_holder())


# A test hook, empty in normal use: a manifest whose `target.provider` is a key here gets the
# provider that this factory builds from the loaded manifest, so a test can run a command on an
# `azureml` manifest through an offline transport (see tests/test_azure_rollout.py).
PROVIDER_FACTORIES: dict[str, object] = {}


def open_provider(loaded, *, announce: bool = False):
    target = loaded.rollout.spec.target
    factory = PROVIDER_FACTORIES.get(target.provider)
    if callable(factory):
        return factory(loaded)
    if target.provider == "local":
        from engine.home import state_home
        from engine.providers.local.provider import LocalProvider

        provider = LocalProvider(state_home())
        if announce and provider.ensure_server():
            say(f"started the local backend in the background (state in {state_home()})")
        return provider
    from engine.providers.azureml import AzureMLProvider

    return AzureMLProvider.from_target(target)


def _who() -> str:
    from engine.reconcile import default_holder

    return os.environ.get("SAFEROLLOUT_OPERATOR") or default_holder().split(":")[0]


# ---------------------------------------------------------------------------------------------
# Commands


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Manifest files or folders.")],
    format: FormatOption = Format.text,
) -> None:
    """Check manifests without contacting any provider (JSON: the list of them, for CI)."""
    import json

    from engine.loader import load_paths

    if format is Format.markdown:
        fail("validate writes text or json")
    loaded = load_paths(paths)
    if format is Format.json:
        listed = [
            {
                "file": item.path.as_posix(),
                "rollout": item.rollout.metadata.name,
                "endpoint": item.rollout.spec.target.endpoint,
                "provider": item.rollout.spec.target.provider,
                "model": {
                    "name": item.rollout.spec.model.name,
                    "version": item.rollout.spec.model.version,
                },
            }
            for item in loaded
        ]
        sys.stdout.write(json.dumps({"version": 1, "manifests": listed}, indent=2) + "\n")
    for item in loaded:
        say(f"ok: {item.path} ({item.rollout.spec.target.provider} endpoint "
            f"{item.rollout.spec.target.endpoint})")  # fmt: skip


@app.command()
def plan(
    target: Target,
    format: FormatOption = Format.text,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 2 when there are changes.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Save the plan for `apply --plan`.")
    ] = None,
) -> None:
    """Show what `apply` would do now, without changing anything (a manifest or a folder)."""
    from engine.decide import plan_pass
    from engine.loader import load_paths
    from engine.reconcile import deployable_problem
    from engine.render import plan_json, render_plan

    folder = Path(target).is_dir()
    if folder and out is not None:
        fail("--out saves the plan of one manifest; name a manifest file")
    # A folder is planned as a whole, so two manifests for one endpoint are refused (F09).
    manifests = load_paths([Path(target)]) if folder else [_load(target)]
    changes = False
    documents = []
    for loaded in manifests:
        reconciler = _open(loaded)
        live = reconciler.read()
        now = reconciler.clock.now()
        plans = plan_pass(reconciler.desired, live, now, reconciler.observe(live))
        changes = changes or any(p.actions for p in plans)
        problem = deployable_problem(reconciler.provider, reconciler.desired, live)
        if problem and any(a.deployment for p in plans for a in p.actions):
            say(f"warning: apply will stop before writing anything: {problem}")
        if out is not None:
            from engine.savedplan import save

            save(out, loaded.path, reconciler.desired, live, plans)
            say(f"saved the plan to {out}; apply it with `rollout apply --plan {out}`")
        if format is Format.json:
            documents.append(plan_json(plans, reconciler.desired))
        elif format is Format.markdown:
            from engine.markdown import render_plan_markdown

            documents.append(render_plan_markdown(plans, reconciler.desired))
        else:
            documents.append(render_plan(plans, reconciler.desired))
    if format is Format.json and folder:
        import json

        merged = {"version": 1, "plans": [json.loads(d) for d in documents]}
        sys.stdout.write(json.dumps(merged, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(documents))
    if detailed_exitcode and changes:
        global _changes_pending
        _changes_pending = True
        raise typer.Exit(EXIT_CHANGES)


@app.command()
def apply(
    target: Annotated[
        str | None, typer.Argument(help="A manifest file or endpoint; not with --plan.")
    ] = None,
    saved: Annotated[
        Path | None, typer.Option("--plan", help="Apply a plan saved by `plan --out`.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Repeat passes until the rollout ends.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.5, help="Seconds between passes with --wait.")
    ] = 5.0,
) -> None:
    """Run one reconcile pass (or, with --wait, passes until the rollout settles)."""
    if (target is None) == (saved is None):
        fail("give a manifest (or endpoint), or --plan FILE, but not both")
    if saved is not None:
        from engine.decide import plan_pass
        from engine.savedplan import check_current, load

        plan_file = load(saved)
        loaded = _load(plan_file.manifest)
        reconciler = _open(loaded)
        live = reconciler.read()
        now = reconciler.clock.now()
        check_current(
            plan_file, reconciler.desired, live, plan_pass(reconciler.desired, live, now,
            reconciler.observe(live))
        )  # fmt: skip
    loaded = _load(target) if target is not None else loaded
    reconciler = _open(loaded)
    reconciler.on_event = lambda message: say(f"- {message}")
    # The local backend is started only once the pass is about to act (or the endpoint is
    # found managed), so a refused pass leaves nothing running.
    reconciler.before_acting = lambda: _serve_in_background(reconciler.provider)
    code = _run_passes(reconciler, wait=wait, interval=interval)
    raise typer.Exit(code)


def _serve_in_background(provider) -> None:
    ensure = getattr(provider, "ensure_server", None)
    if ensure is not None and ensure():
        from engine.home import state_home

        say(f"started the local backend in the background (state in {state_home()})")


def _run_passes(reconciler, *, wait: bool, interval: float) -> int:
    from engine.plan import Outcome
    from engine.render import progress_line, render_gates

    settled = {
        Outcome.CONVERGED,
        Outcome.FOUND_ROLLED_BACK,
        Outcome.PAUSED,
        Outcome.ROLLED_BACK,
        Outcome.FAILED,
    }
    while True:
        result = reconciler.apply()
        final = result.final
        if final is not None and final.phase is not None:
            _serve_in_background(reconciler.provider)  # a managed endpoint should be served
        if final is not None and wait and final.outcome is Outcome.WAITING:
            # One compact line per pass while following a rollout: step, bake left, gates.
            say(progress_line(final, reconciler.clock.now()))
        elif final is not None:
            for line in render_gates(final.gates):
                say(line)
            say(f"{reconciler.endpoint}: {final.summary}")
        if result.rolled_back:
            return EXIT_ROLLED_BACK
        if not wait or final is None or final.outcome in settled:
            return 0
        delay = min(interval, final.wait_seconds or interval)
        reconciler.clock.sleep(max(0.5, delay))


@app.command()
def status(target: Target, format: FormatOption = Format.text) -> None:
    """Show the rollout's phase, step, traffic and gate values."""
    import json

    from engine.decide import plan_pass
    from engine.render import render_status, status_data

    loaded = _load(target)
    reconciler = _open(loaded)
    live = reconciler.read()
    now = reconciler.clock.now()
    plans = plan_pass(reconciler.desired, live, now, reconciler.observe(live))
    data = status_data(reconciler.desired, live, plans[0], now)
    if format is Format.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif format is Format.markdown:
        from engine.markdown import render_status_markdown

        sys.stdout.write(render_status_markdown(data, reconciler.desired.rollout.spec.gates))
    else:
        sys.stdout.write(render_status(data))


@app.command()
def history(
    target: Target,
    format: FormatOption = Format.text,
    chart: Annotated[
        Path | None,
        typer.Option("--chart", help="Also draw each gate's value per step to this PNG file."),
    ] = None,
) -> None:
    """Show the steps of the current rollout with their verdicts and figures."""
    import json

    from engine.decide import plan_pass
    from engine.render import render_history, status_data

    loaded = _load(target)
    reconciler = _open(loaded)
    live = reconciler.read()
    now = reconciler.clock.now()
    data = status_data(reconciler.desired, live, plan_pass(reconciler.desired, live, now)[0], now)
    gates = reconciler.desired.rollout.spec.gates
    if format is Format.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif format is Format.markdown:
        from engine.markdown import render_history_markdown

        sys.stdout.write(render_history_markdown(data, gates))
    else:
        sys.stdout.write(render_history(data))
    if chart is not None:
        from engine.chart import draw_history_chart

        drawn = draw_history_chart(data, gates, chart)
        say(f"wrote {chart} ({drawn} gate{'s' if drawn != 1 else ''} drawn)")


def _operator(target: str, kind: str, full: bool = False) -> None:
    from engine.decide import Command

    loaded = _load(target)
    reconciler = _open(loaded)
    reconciler.on_event = lambda message: say(f"- {message}")
    result = reconciler.apply(Command(kind=kind, who=_who(), full=full))  # type: ignore[arg-type]
    if result.final is not None:
        say(f"{reconciler.endpoint}: {result.final.summary}")
    from engine.plan import Outcome

    failed = any(p.outcome is Outcome.FAILED for p in (*result.plans, result.final) if p)
    # An abort that rolled back did what was asked; anything that ended Failed needs a human.
    if failed or (result.rolled_back and kind != "abort"):
        raise typer.Exit(EXIT_ROLLED_BACK)


@app.command()
def promote(
    target: Target,
    full: Annotated[bool, typer.Option("--full", help="Skip all remaining steps.")] = False,
) -> None:
    """Skip the current step's wait (approval, hold, bake): advance one step, or all with --full."""
    _operator(target, "promote", full)


@app.command()
def abort(target: Target) -> None:
    """Roll the candidate back now: all live traffic to stable."""
    _operator(target, "abort")


@app.command()
def retry(target: Target) -> None:
    """Start a rolled-back version again from the first step."""
    _operator(target, "retry")


@app.command()
def undo(target: Target) -> None:
    """After a promotion, put all traffic back on the previous deployment."""
    _operator(target, "undo")


@app.command()
def unlock(target: Target) -> None:
    """Break the endpoint's lease when the run holding it is gone, and record who did."""
    from dataclasses import replace

    from engine.live import EndpointWrite
    from engine.state import decode, encode, format_time

    loaded = _load(target)
    reconciler = _open(loaded)
    live = reconciler.read()
    state = decode(live.tags)
    if state.lease is None:
        say(f"{reconciler.endpoint} is not locked; nothing to do")
        return
    now = reconciler.clock.now()
    note = f"unlock by {_who()} at {format_time(now)} (lease of {state.lease.holder})"
    write = EndpointWrite(
        live.live_traffic(), live.live_mirror(), encode(replace(state, lease=None, override=note))
    )
    reconciler.provider.update_endpoint(reconciler.endpoint, write, expected_revision=live.revision)
    say(f"{reconciler.endpoint}: broke the lease held by {state.lease.holder}")


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind; loopback unless given.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 picks a free one).")] = 8731,
) -> None:
    """Run the local backend's data plane in the foreground (Ctrl-C stops it)."""
    from engine.home import state_home
    from engine.providers.local.server import serve as run_server

    home = state_home()
    run_server(
        home,
        host=host,
        port=port,
        on_ready=lambda url: say(
            f"serving {home} at {url} (endpoints at {url}/endpoints/NAME/score)"
        ),
    )


@app.command()
def demo(
    fast: Annotated[bool, typer.Option("--fast", help="Short bakes, for tests.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the backend running.")] = False,
) -> None:
    """Train, serve and roll out three versions of the credit-risk model on this machine."""
    from engine.demo import run_demo

    raise typer.Exit(run_demo(fast=fast, keep=keep, say=say).exit_code)


def main() -> None:
    try:
        app()
    except SystemExit as done:
        # The argument parser exits 2 on a usage error, which would read as "changes pending"
        # to a CI step using --detailed-exitcode: a usage error is an error, exit 1.
        if done.code == EXIT_CHANGES and not _changes_pending:
            sys.exit(1)
        raise
    except SafeRolloutError as error:
        report_error(error)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
