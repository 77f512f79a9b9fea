"""Where the repository's parts are, seen from the operator tool (installed editable from the repo root)."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSION_FILE = REPO_ROOT / "VERSION"
NOTEBOOKS_DIR = REPO_ROOT / "orchestrator" / "notebooks"
TEMPLATES_DIR = REPO_ROOT / "job_templates"
DIST_DIR = REPO_ROOT / "dist"


def project_version() -> str:
    return VERSION_FILE.read_text(encoding="utf-8").strip()
