"""Every ``snakemake`` command of the READMEs works as written.

The commands are read from README.md and the SLURM profile's README (code blocks
and inline code). Each one is parsed by Snakemake's own argument parser (fast), and
run as a dry run in a temporary ``--directory`` with the checkout's Snakefile (slow).
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "workflow/profiles/slurm/README.md"]
PLACEHOLDERS = {"TARGET": "all_tables"}     # the SLURM README's "check what a change submits"
SLURM_VARIABLES = {
    "LOGVMAMBA_SLURM_ACCOUNT": "test_account",
    "LOGVMAMBA_SLURM_PARTITION": "test_cpu",
    "LOGVMAMBA_SLURM_GPU_PARTITION": "test_gpu",
}
USER_CONFIG = "my_config.yaml"              # the "Add a baseline" walkthrough's copy of config.yaml


def readme_commands(text: str) -> list[str]:
    """The ``snakemake ...`` commands of a Markdown text, in order, without repeats."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.splitlines():
            match = re.search(r"(?:^|&&|;)\s*(snakemake\s[^#;&]*)", line)
            if match:
                commands.append(match.group(1).strip())
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())  # an inline span may wrap over lines
        if span.startswith("snakemake "):
            commands.append(span)
    return list(dict.fromkeys(" ".join(PLACEHOLDERS.get(w, w) for w in c.split(" ")) for c in commands))


COMMANDS = list(dict.fromkeys(c for path in READMES for c in readme_commands(path.read_text())))


def _rule_names() -> set[str]:
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    names = {n for f in files for n in re.findall(r"^\s*rule\s+(\w+)\s*:", f.read_text(), re.MULTILINE)}
    from logvmamba.data import DATASETS

    return names | {f"metrics_{key}" for key in DATASETS}


def test_the_readmes_commands_are_found():
    assert "snakemake --cores 8 all_tables" in COMMANDS
    assert any("--report" in c for c in COMMANDS) and any("--profile workflow/profiles/slurm" in c for c in COMMANDS)
    assert any("config/paper.yaml" in c for c in COMMANDS) and any(USER_CONFIG in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_parses_as_meant(command):
    """Config files exist and every target is a rule: ``--configfile F target`` would read the target as a file."""
    from snakemake.cli import get_argument_parser

    args = get_argument_parser().parse_args(shlex.split(command)[1:])
    for path in args.configfile or []:
        assert str(path) == USER_CONFIG or (ROOT / path).is_file(), f"{command}: no config file {path}"
    assert set(args.targets or []) <= _rule_names(), f"{command}: targets {args.targets}"
    if args.profile:
        assert all((ROOT / p).is_dir() for p in args.profile), command


def _snakemake(argv, cwd, env):
    out = subprocess.run([sys.executable, "-m", "snakemake", *argv], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    return out.returncode, out.stdout + out.stderr


def _user_config(tmp_path, env) -> Path:
    """The walkthrough's files: its baseline module (on PYTHONPATH) and a config with my_unet added."""
    readme = (ROOT / "README.md").read_text()
    (tmp_path / "my_unet.py").write_text(readme.split("# baselines/my_unet.py\n", 1)[1].split("```", 1)[0])
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")])),
               LOGVMAMBA_MODEL_MODULES="my_unet")
    text = (ROOT / "config/config.yaml").read_text()
    config = tmp_path / USER_CONFIG
    config.write_text(text.replace("models: [logvmamba, nnunet]\n", "models: [logvmamba, nnunet, my_unet]\n"))
    return config


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_dry_runs(command, tmp_path):
    argv = shlex.split(command)[1:]
    env = {k: v for k, v in os.environ.items() if k not in SLURM_VARIABLES}
    if USER_CONFIG in command:
        config = _user_config(tmp_path, env)
        argv = [a.replace(USER_CONFIG, str(config)) for a in argv]
    if "--profile" in argv:
        pytest.importorskip("snakemake_executor_plugin_slurm")
        env.update(SLURM_VARIABLES)
    work = tmp_path / "work"
    ours = ["--directory", str(work), "--snakefile", str(ROOT / "Snakefile")]
    if "--report" in argv:
        # A report needs finished results: empty stand-ins for every output the workflow lists.
        code, out = _snakemake(["--summary", *ours], ROOT, env)
        assert code == 0, out[-3000:]
        files = [line.split("\t", 1)[0] for line in out.splitlines()[1:] if "\t" in line]
        for name in files:
            if not any(other.startswith(name + "/") for other in files):
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                (work / name).touch()
        code, out = _snakemake([*ours, *argv], ROOT, env)
        assert code == 0 and "Report created" in out, out[-3000:]
        assert (work / argv[argv.index("--report") + 1]).stat().st_size > 0
    elif "--lint" in argv:
        code, out = _snakemake([*ours, *argv], ROOT, env)
        assert code == 0 and "Congratulations" in out, out[-3000:]
    else:
        code, out = _snakemake(["-n", *ours, *argv], ROOT, env)
        assert code == 0 and "This was a dry-run" in out, out[-3000:]
