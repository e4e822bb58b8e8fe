"""Writes tests/chart/fixtures/sidecar/ from the chart (see chartlib.fixture_files)."""

import shutil

import chartlib


def main() -> None:
    files = chartlib.fixture_files(chartlib.VARIANTS[chartlib.FIXTURE_VARIANT])
    shutil.rmtree(chartlib.FIXTURE_DIR, ignore_errors=True)
    for rel, text in files.items():
        path = chartlib.FIXTURE_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(files)} files to {chartlib.FIXTURE_DIR}")


if __name__ == "__main__":
    main()
