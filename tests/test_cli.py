"""The command line's conventions: help, usage errors, option types shared across commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, check_error_text, run_cli

COMMANDS = ["models", "prune", "export", "profile", "eval"]


def test_console_script_runs():
    script = Path(sys.executable).parent / "sta"
    assert script.is_file(), "the `sta` console script is not installed next to this Python"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("sta "), r.stderr
    r = subprocess.run([sys.executable, "-m", "sta_cli", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("sta "), r.stderr


def test_top_level_help_lists_commands_in_workflow_order():
    r = run_cli("-h")
    assert r.exit_code == 0
    listed = [line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_flags_bare_and_every_default(command):
    r = run_cli(command, "-h")
    assert r.exit_code == 0, r.stderr
    assert "<bool>" not in r.stdout and "--force / --no-force" not in r.stdout
    if command in ("prune", "export", "profile", "eval"):
        text = " ".join(r.stdout.split())
        for option in ("--first-group", "--seed", "--order", "--schedule", "--similarity", "--score"):
            assert option in text
        assert "[default: (sta, or an artifact's own)]" in text  # the STA options show their defaults
        assert "sta | temporal | semantic | random" in text


def test_every_option_without_a_value_default_says_what_happens():
    """An option whose default is None shows in words what it means ([default: (...)] in -h)."""
    import typer

    from sta_cli.cli import app

    silent = [
        (command, p.opts)
        for command, cmd in typer.main.get_command(app).commands.items()
        for p in cmd.params
        if p.param_type_name == "option" and not p.is_flag and p.default is None and not p.required
        if not isinstance(p.show_default, str) and (command, p.name) != ("export", "model")  # "Instead of SOURCE"
    ]
    assert silent == []


def test_an_option_in_several_commands_means_the_same_in_each():
    """Same flags, metavar and help wherever an option appears; the few that cannot be the same say
    in their help how they differ (eval's --r1 list and --force over a resumable OUT)."""
    import typer

    from sta_cli.cli import app

    commands = typer.main.get_command(app).commands
    by_name: dict[str, dict[str, tuple]] = {}
    for command, cmd in commands.items():
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                by_name.setdefault(max(p.opts, key=len), {})[command] = (tuple(sorted(p.opts)), p.metavar, p.help)
    differ = {("eval", "--r1"), ("eval", "--force"), ("eval", "--out"), ("export", "--model"), ("export", "--out")}
    for option, seen in by_name.items():
        same = {v for command, v in seen.items() if (command, option) not in differ}
        assert len(same) <= 1, (option, seen)
    assert {"profile", "eval"} <= set(by_name["--batch"]) and by_name["--batch"]["eval"][0] == ("--batch", "-b")
    assert {"profile", "eval"} <= set(by_name["--views"])
    assert "unlike prune's, export's and profile's single --r1" in by_name["--r1"]["eval"][2]
    assert "without --force eval resumes them" in by_name["--force"]["eval"][2]
    assert "re-running with the same folder resumes" in by_name["--out"]["eval"][2]


@pytest.mark.parametrize(
    "args, words",
    [
        (["prune", "--model", "demo", "--r1", "abc"], "Invalid value for '--r1'"),
        (["prune", "--no-such-option"], "No such option"),
        (["eval"], "Missing argument 'DATASET'"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args, words):
    r = subprocess.run([sys.executable, "-m", "sta_cli", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    check_error_text(r.stderr, words)


def test_seed_without_a_random_choice_is_an_error(tmp_path):
    r = run_cli("prune", "--model", "demo", "--seed", 3, "-o", tmp_path / "x")
    assert_one_line_error(r, "--seed has no effect")
    assert not (tmp_path / "x").exists()


def test_eval_without_a_model_takes_the_demo_with_an_r1_list_that_fits(tmp_path):
    demo = Path(__import__("sta_cli").__file__).parent / "assets" / "demo"
    (tmp_path / "videos.txt").write_text(f"{demo / 'sample.mp4'} 0\n")
    r = run_cli("eval", "videos.txt", "--workers", 0, "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert "using the packaged demo model" in r.stderr
    import json

    summary = json.loads(r.stdout)
    assert [row["r1"] for row in summary["settings"]] == [0, 10, 21]


def test_a_flops_change_is_signed():
    """STA's scoring can cost more than the few tokens a small r1 drops on a narrow model: shown "+10%",
    not "(--10%)"."""
    from sta_cli.cli.common import flops_change

    assert flops_change(0.232, 0.365) == "-36%" and flops_change(0.276, 0.252) == "+10%"
