"""Writes tests/chart/fixtures/{sidecar,cluster,cluster-tls,callout-cluster}/ from the chart (see
chartlib.fixture_files)."""

import shutil

import chartlib


def main() -> None:
    for variant, directory in [(chartlib.FIXTURE_VARIANT, chartlib.FIXTURE_DIR),
                               (chartlib.CLUSTER_FIXTURE_VARIANT, chartlib.CLUSTER_FIXTURE_DIR),
                               (chartlib.CLUSTER_TLS_FIXTURE_VARIANT, chartlib.CLUSTER_TLS_FIXTURE_DIR),
                               (chartlib.CALLOUT_CLUSTER_FIXTURE_VARIANT,
                                chartlib.CALLOUT_CLUSTER_FIXTURE_DIR)]:
        files = chartlib.fixture_files(chartlib.VARIANTS[variant])
        shutil.rmtree(directory, ignore_errors=True)
        for rel, text in files.items():
            path = directory / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        print(f"wrote {len(files)} files to {directory}")


if __name__ == "__main__":
    main()
