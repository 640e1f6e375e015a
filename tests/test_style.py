"""House style the product's Python keeps: lines of at most 120 characters."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("l2s", "kernels", "engines", "bench")
LIMIT = 120


def _product_python() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--", *(f"{top}/*.py" for top in PRODUCT)], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout.strip():
        return [ROOT / name for name in listed.stdout.split()]
    return [path for top in PRODUCT for path in (ROOT / top).rglob("*.py")]   # an unpacked sdist: no git


def test_product_lines_fit_in_120_characters():
    files = _product_python()
    assert len(files) > 50                                    # the listing found the product, not nothing
    long = [f"{path.relative_to(ROOT)}:{number} ({len(line)})"
            for path in files for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > LIMIT]
    assert not long, "lines over 120 characters: " + ", ".join(long)
