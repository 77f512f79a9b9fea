"""A/B and shadow tests of the bundle's challenger (version 2 beside champion version 1, tests/fakes/serving.py),
through the service's ASGI app with its inference table written by delta-rs and read back: in shadow mode every
answer is the champion's and the challenger's predictions of the same trips land in the table only; in A/B mode
the challenger answers its share of the routing keys (measured over 400 keys), always the same keys."""
import json

import pytest
from deltalake import DeltaTable

from fakes.serving import build_bundle, call_asgi, loaded_app, sample_trips
from taxi_fares_mlops.serving.app import Settings
from taxi_fares_mlops.serving.bundle import BundleError, load_bundle

SHARE = 0.25


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("challenger"), with_challenger=True)


def _app(bundle, table, **settings):
    return loaded_app(Settings(bundle=str(bundle[0]), trusted_key=str(bundle[1]), inference_table=str(table),
                               **settings))


def _rows(app, table):
    assert app.state.service.inference_log.flush()
    return DeltaTable(str(table)).to_pandas()


def test_in_shadow_the_champion_answers_and_the_challengers_predictions_are_only_logged(bundle, tmp_path):
    table = tmp_path / "inference"
    app = _app(bundle, table, challenger_mode="shadow")
    trips = sample_trips(5, seed=1)
    status, body, _ = call_asgi(app, "POST", "/v1/predict", {"trips": trips})
    assert status == 200 and body["model_version"] == "1" and body["variant"] == "champion", body
    rows = _rows(app, table)
    app.state.service.stop()
    assert sorted(rows["served_entity_id"]) == ["taxi_fares/1", "taxi_fares/2"]
    assert set(rows["databricks_request_id"]) == {body["request_id"]}
    shadow = json.loads(rows.loc[rows["served_entity_id"] == "taxi_fares/2", "response"].iloc[0])
    answered = json.loads(rows.loc[rows["served_entity_id"] == "taxi_fares/1", "response"].iloc[0])
    assert shadow["variant"] == "shadow" and answered == body
    assert len(shadow["predictions"]) == 5
    # the challenger (trained on fares 20% higher) predicts more for the same trips, and answers so in A/B mode
    ours = [p["fare_amount"] for p in body["predictions"]]
    theirs = [p["fare_amount"] for p in shadow["predictions"]]
    assert all(b > a for a, b in zip(ours, theirs)), (ours, theirs)
    ab = _app(bundle, tmp_path / "ab", challenger_mode="ab", challenger_share=0.999999)
    status, routed, _ = call_asgi(ab, "POST", "/v1/predict", {"trips": trips}, headers={"X-Client-Request-Id": "k"})
    ab.state.service.stop()
    assert routed["variant"] == "challenger" and routed["model_version"] == "2"
    assert [p["fare_amount"] for p in routed["predictions"]] == theirs


def test_ab_routes_the_share_of_routing_keys_to_the_challenger_and_each_key_sticks(bundle, tmp_path):
    table = tmp_path / "inference"
    app = _app(bundle, table, challenger_mode="ab", challenger_share=SHARE)
    trips = {"trips": sample_trips(1, seed=2)}
    first = {}
    for i in range(400):
        status, body, _ = call_asgi(app, "POST", "/v1/predict", trips, headers={"X-Client-Request-Id": f"c-{i}"})
        assert status == 200
        first[f"c-{i}"] = body["variant"]
    again = {key: call_asgi(app, "POST", "/v1/predict", trips, headers={"X-Client-Request-Id": key})[1]["variant"]
             for key in list(first)[:50]}
    rows = _rows(app, table)
    metrics = app.state.service.metrics
    app.state.service.stop()
    share = sum(v == "challenger" for v in first.values()) / len(first)
    assert abs(share - SHARE) < 0.07, share  # 400 keys: 3 standard deviations is about 0.065
    assert again == {key: first[key] for key in again}
    served = rows.groupby("served_entity_id").size().to_dict()
    assert served["taxi_fares/2"] == sum(v == "challenger" for v in list(first.values()) + list(again.values()))
    assert sum(served.values()) == 450
    assert metrics.variants.labels("challenger")._value.get() == served["taxi_fares/2"]


def test_a_challenger_mode_without_a_challenger_or_a_share_is_refused(bundle, tmp_path):
    alone = build_bundle(tmp_path / "alone")
    with pytest.raises(ValueError, match="needs a bundle with a challenger"):
        loaded_app(Settings(bundle=str(alone[0]), trusted_key=str(alone[1]), challenger_mode="shadow"))
    for settings, message in (({"challenger_mode": "ab"}, "needs a challenger_share between 0 and 1"),
                              ({"challenger_mode": "ab", "challenger_share": 1.5}, "between 0 and 1"),
                              ({"challenger_share": 0.5}, "challenger_share is for challenger_mode ab"),
                              ({"challenger_mode": "canary"}, "challenger_mode must be one of off, shadow, ab")):
        with pytest.raises(ValueError, match=message):
            Settings(bundle=str(bundle[0]), **settings).checked()


def test_a_manifest_naming_the_champion_as_its_challenger_is_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from taxi_fares_mlops.serving.bundle import MANIFEST, SIGNATURE
    from taxi_fares_mlops.signing import public_pem, sign

    folder, _ = build_bundle(tmp_path, with_challenger=True)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["models"]["challenger"]["version"] = "1"
    key = Ed25519PrivateKey.generate()
    data = json.dumps(manifest).encode()
    (folder / MANIFEST).write_bytes(data)
    (folder / SIGNATURE).write_bytes(sign(data, key))
    (tmp_path / "k.pub").write_bytes(public_pem(key))
    with pytest.raises(BundleError, match="the challenger must be another version of 'taxi_fares'"):
        load_bundle(folder, tmp_path / "k.pub")


def test_an_authenticated_caller_cannot_pick_its_variant_with_a_header(bundle, tmp_path):
    """Routed by who calls: a caller trying one X-Client-Request-Id after another (shopping for the lower fare
    estimate) always gets the same model."""
    from taxi_fares_mlops.serving.auth import API_KEY, AuthSettings

    keys = [f"caller-{i:02d}-0123456789abcdef" for i in range(12)]
    (tmp_path / "keys").write_text("\n".join(keys) + "\n")
    app = loaded_app(Settings(bundle=str(bundle[0]), trusted_key=str(bundle[1]), challenger_mode="ab",
                              challenger_share=0.5,
                              auth=AuthSettings(mode=API_KEY, api_keys_file=str(tmp_path / "keys"))))
    trips = {"trips": sample_trips(1, seed=3)}
    seen = {}
    for key in keys:
        seen[key] = {call_asgi(app, "POST", "/v1/predict", trips, headers={
            "Authorization": f"Bearer {key}", "X-Client-Request-Id": f"try-{i}"})[1]["variant"] for i in range(15)}
    app.state.service.stop()
    assert all(len(variants) == 1 for variants in seen.values()), seen
    assert {v for variants in seen.values() for v in variants} == {"champion", "challenger"}  # 12 callers, both


class _Failing:
    """A challenger that predicts zeros for the all-zero probe and fails on real inputs (or always, ``always``)."""

    def __init__(self, always: bool = False):
        self.always = always

    def predict(self, frame):
        import numpy as np

        if self.always or (frame.to_numpy() != 0).any():
            raise RuntimeError("the challenger broke")
        return np.zeros(len(frame))


def _with_challenger(tmp_path, challenger):
    """The fake bundle with ``challenger`` as its challenger's pickle, signed anew."""
    import cloudpickle
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from taxi_fares_mlops.serving.bundle import MANIFEST, PICKLE, SIGNATURE, checksums
    from taxi_fares_mlops.signing import public_pem, sign

    folder, _ = build_bundle(tmp_path, with_challenger=True)
    cloudpickle.register_pickle_by_value(__import__(__name__))
    try:
        (folder / "models" / "challenger" / PICKLE).write_bytes(cloudpickle.dumps(challenger))
    finally:
        cloudpickle.unregister_pickle_by_value(__import__(__name__))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = checksums(folder)
    key = Ed25519PrivateKey.generate()
    data = json.dumps(manifest).encode()
    (folder / MANIFEST).write_bytes(data)
    (folder / SIGNATURE).write_bytes(sign(data, key))
    (tmp_path / "k.pub").write_bytes(public_pem(key))
    return folder, tmp_path / "k.pub"


def test_a_challenger_failing_in_shadow_never_costs_the_champions_answer(tmp_path):
    folder, trusted = _with_challenger(tmp_path, _Failing())
    table = tmp_path / "inference"
    app = loaded_app(Settings(bundle=str(folder), trusted_key=str(trusted), challenger_mode="shadow",
                              inference_table=str(table)))
    status, body, _ = call_asgi(app, "POST", "/v1/predict", {"trips": sample_trips(2, seed=4)})
    assert status == 200 and body["variant"] == "champion" and len(body["predictions"]) == 2
    service = app.state.service
    assert service.metrics.shadow_failures._value.get() == 1
    rows = _rows(app, table)
    service.stop()
    assert list(rows["served_entity_id"]) == ["taxi_fares/1"]  # no shadow row for the failed scoring


def test_a_challenger_that_cannot_predict_the_inputs_is_refused_at_load(tmp_path):
    folder, trusted = _with_challenger(tmp_path, _Failing(always=True))
    with pytest.raises(ValueError, match="the bundle's challenger cannot predict from the service's inputs"):
        loaded_app(Settings(bundle=str(folder), trusted_key=str(trusted), challenger_mode="ab",
                            challenger_share=0.5))
