"""The reference pages are generated from the code (``orchestrator.reference``): a page that drifts from the parser,
the config declarations, the variable registry or the exit codes fails here, and every ``MLOPS_*`` name the code
mentions is declared in the registry."""
import re

from orchestrator import reference
from orchestrator.environment import VARIABLES
from orchestrator.paths import REPO_ROOT


def test_the_generated_pages_match_the_code():
    assert reference.stale_pages() == [], "run `make docs` and commit the pages"


def test_a_page_that_drifts_from_the_code_is_found(tmp_path, monkeypatch):
    page = tmp_path / "reference" / "exit-codes.md"
    page.parent.mkdir()
    page.write_text(reference.exit_codes_page().replace("| 2 |", "| 7 |"))
    (tmp_path / "performance.md").write_text(
        f"# Performance\n\n{reference.RESULTS_START}\n{reference.RESULTS_END}\n")
    monkeypatch.setattr(reference, "DOCS", tmp_path)
    monkeypatch.setattr(reference, "PAGES", {"reference/exit-codes.md": reference.exit_codes_page})
    monkeypatch.setattr(reference, "REPO_ROOT", tmp_path)
    assert reference.stale_pages() == ["reference/exit-codes.md", "performance.md"]


def test_every_job_parameter_and_command_is_on_its_page():
    from orchestrator.cli import build_parser
    from taxi_fares_mlops.config import CONFIGS

    parameters = (REPO_ROOT / "docs/reference/job-parameters.md").read_text()
    for config in CONFIGS.values():
        for p in config.parameters():
            assert f"| `{p.name}` |" in parameters
    cli = (REPO_ROOT / "docs/reference/cli.md").read_text()
    commands = [name for name, _, _ in reference._subcommands(build_parser())]
    assert commands and all(f"## `mlops {name}`" in cli for name in commands)


def test_every_mlops_variable_the_code_names_is_declared_once():
    declared = {v.name for v in VARIABLES}
    assert len(declared) == len(VARIABLES)
    prefixes = {name for name in declared if name.endswith("_")}
    named = set()
    for folder in ("ml_source", "ml_ops", "orchestrator", "service_deployment", ".azure-pipelines", "job_templates"):
        for path in (REPO_ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yml", ".yaml", ".json", ".toml", "") and \
                    "__pycache__" not in path.parts:
                named |= set(re.findall(r"\bMLOPS_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")))
    # NAME_ENV is a Python constant holding a variable's name, not a variable
    undeclared = {n for n in named - declared if not any(n.startswith(p) for p in prefixes) and
                  not n.endswith("_ENV")}
    assert undeclared == set()
