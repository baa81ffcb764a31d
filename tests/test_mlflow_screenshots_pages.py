"""dashboards/mlflow_screenshots.py's choice of pages on a real MLflow store holding two invocations
of one sweep (as a sweep and its ``--until-settled`` continuation leave it): the newest parent by
default, the one named by ``--parent`` otherwise, and each parent's own child run. No browser
(test_mlflow_ui.py takes the screenshots)."""

from __future__ import annotations

import time

import pytest

from dashboards.mlflow_screenshots import pages, read_sweep


@pytest.fixture(scope="module")
def two_invocations(mlflow_uri, tmp_path_factory):
    from mlflow import MlflowClient

    uri = mlflow_uri  # the session's store (its set-up is paid once); an experiment of this test's own
    client = MlflowClient(tracking_uri=uri)
    eid = client.create_experiment("screenshot_pages", artifact_location=str(tmp_path_factory.mktemp("artifacts")))
    ids = {}
    for invocation, child in (("first", "g2 a.25 s0"), ("second", "g2 a.25 s3")):
        parent = client.create_run(eid, run_name="ga", tags={"run_kind": "sweep", "sweep_name": "screenshot_pages"})
        run = client.create_run(eid, run_name=child, tags={"run_kind": "trial", "status": "finished",
                                                           "mlflow.parentRunId": parent.info.run_id})
        ids[invocation] = parent.info.run_id, run.info.run_id
        time.sleep(0.01)  # distinct start times: "newest" is well defined
    return uri, ids


def test_the_newest_parent_by_default_and_the_named_one_with_parent(two_invocations):
    uri, ids = two_invocations
    newest = pages(read_sweep(uri, "screenshot_pages"), "http://h")
    assert newest["parent"].endswith(f"/runs/{ids['second'][0]}")
    assert newest["child"].endswith(f"/runs/{ids['second'][1]}")
    named = pages(read_sweep(uri, "screenshot_pages", ids["first"][0]), "http://h")
    assert named["parent"].endswith(f"/runs/{ids['first'][0]}")
    assert named["child"].endswith(f"/runs/{ids['first'][1]}")


def test_an_unknown_parent_is_named_in_the_error(two_invocations):
    uri, _ = two_invocations
    with pytest.raises(SystemExit, match="--parent nope: no sweep run with that id"):
        read_sweep(uri, "screenshot_pages", "nope")
