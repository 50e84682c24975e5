"""The decode pool (toolkit.runtime.decode_pool): input order, the same arrays as decoding one by one, a bad
image failing alone, the bound on images in flight, and a departed client's queued decode never running."""
import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder, write_tiny_model

from toolkit.preprocess import ImageError
from toolkit.runtime.decode_pool import ClientGone, DecodePool


def jpeg(seed, size=(97, 71)):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from toolkit.runtime.predictor import Predictor

    return Predictor(write_tiny_model(tmp_path_factory.mktemp("pool") / "tiny.onnx"), device="cpu")


def test_results_come_in_input_order_and_match_one_by_one(predictor):
    """Later items finish first (shorter sleeps), yet come back in input order, bit for bit the arrays
    prepare_one gives serially; a truncated and a garbage body fail alone with their own ImageError."""
    bodies = [jpeg(i, (60 + 7 * i, 50 + 3 * i)) for i in range(12)]
    bodies[4] = bodies[4][: len(bodies[4]) // 3]   # cut short
    bodies[9] = b"not an image at all"

    def slow_prepare(index):
        time.sleep(0.002 * (12 - index))
        return predictor.prepare_one(bodies[index])

    with DecodePool(workers=4) as pool:
        outcomes = list(pool.ordered(slow_prepare, range(12), ahead=6))
    assert [item for item, _, _ in outcomes] == list(range(12))
    for index, value, error in outcomes:
        if index in (4, 9):
            assert value is None and isinstance(error, ImageError)
            continue
        assert error is None
        want = predictor.prepare_one(bodies[index])
        assert value.dtype == want.dtype and np.array_equal(value, want)


def test_no_more_than_ahead_items_are_in_flight_and_workers_bound_decodes():
    """While the caller holds an item, at most `ahead` more are submitted; at most `workers` run at once."""
    lock = threading.Lock()
    state = {"started": 0, "running": 0, "most_running": 0}

    def decode(i):
        with lock:
            state["started"] += 1
            state["running"] += 1
            state["most_running"] = max(state["most_running"], state["running"])
        time.sleep(0.005)
        with lock:
            state["running"] -= 1
        return i * i

    ahead_seen = []
    with DecodePool(workers=2) as pool:
        for taken, (i, value, error) in enumerate(pool.ordered(decode, range(20), ahead=5), start=1):
            assert error is None and value == i * i
            time.sleep(0.05)                   # the engine's turn: the pool works ahead meanwhile
            with lock:
                ahead_seen.append(state["started"] - taken)
    assert max(ahead_seen) == 5                # a full batch ahead, never more
    assert state["most_running"] == 2


def test_leaving_the_loop_early_cancels_what_has_not_started():
    ran = []
    with DecodePool(workers=1) as pool:
        for i, value, error in pool.ordered(lambda i: ran.append(i) or time.sleep(0.01), range(100), ahead=10):
            break
    assert len(ran) < 12


def test_a_client_that_leaves_cancels_its_queued_decode():
    """One worker busy; a second request queued behind it; its client leaves: ClientGone, and its decode
    never runs. A request whose client stays gets its value."""
    release = threading.Event()
    ran = []

    def decode(item):
        if item == "blocker":
            release.wait(5)
        ran.append(item)
        return item.upper()

    async def scenario():
        pool = DecodePool(workers=1)
        blocker = asyncio.ensure_future(pool.run(decode, "blocker"))
        gone = asyncio.get_running_loop().create_future()
        queued = asyncio.ensure_future(pool.run(decode, "left", gone=gone))
        await asyncio.sleep(0.05)
        gone.set_result(None)                     # the client disconnects
        with pytest.raises(ClientGone):
            await queued
        release.set()
        stays = await pool.run(decode, "stays", gone=asyncio.sleep(30))
        assert await blocker == "BLOCKER" and stays == "STAYS"
        pool.close()

    asyncio.run(scenario())
    assert ran == ["blocker", "stays"]


def test_serve_watches_for_the_disconnect_only():
    """The predict route's `gone`: returns on http.disconnect, not on a further (empty) body message."""
    from toolkit.runtime.serve.app import _client_left

    messages = [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    asyncio.run(asyncio.wait_for(_client_left(receive), 2))
    assert messages == []


def test_evaluate_decodes_while_the_engine_runs_with_the_same_arrays(tmp_path, predictor):
    """decode_and_run (evaluate's pipeline) == load_pixels then run_logits, bit for bit, with an unreadable
    image in the middle shifting the batches."""
    from toolkit.runtime.engines import open_engine
    from toolkit.runtime.onnx_eval import decode_and_run, load_pixels, run_logits

    make_image_folder(tmp_path / "images", per_class=4, size=(40, 36))
    paths = sorted(p for p in (tmp_path / "images").rglob("*.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    items = [(str(p), i % 3) for i, p in enumerate(paths)]
    items.insert(5, (str(tmp_path / "bad.jpg"), 0))
    engine = open_engine(predictor.path, "onnxruntime")
    pixels, targets, skipped = load_pixels(items, predictor.preprocess)
    logits = run_logits(engine, pixels, predictor.preprocess, False, batch_size=3)
    got = decode_and_run(engine, items, predictor.preprocess, False, batch_size=3)
    assert np.array_equal(got[0], pixels) and np.array_equal(got[1], targets) and got[2] == skipped
    assert len(skipped) == 1 and np.array_equal(got[3], logits)


def test_predictor_predict_on_a_list_decodes_on_the_pool_with_the_same_answers(predictor, tmp_path):
    """A list of encoded images or files: the same scores, bit for bit, as one at a time, over several
    batches; a bad item is the same first error as before (images[i]: for bytes, its path for files)."""
    from toolkit.runtime import decode_pool

    bodies = [jpeg(i, (50 + 5 * i, 40 + 2 * i)) for i in range(7)]
    paths = []
    for i, body in enumerate(bodies):
        paths.append(tmp_path / f"p{i}.jpg")
        paths[-1].write_bytes(body)
    one_by_one = [predictor.predict(body, top_k=3) for body in bodies]
    predictor.batch_size = 3
    try:
        calls = []
        real = decode_pool.DecodePool.ordered
        decode_pool.DecodePool.ordered = lambda self, *a, **k: calls.append(k) or real(self, *a, **k)
        try:
            assert predictor.predict(bodies, top_k=3) == one_by_one
            assert predictor.predict([str(p) for p in paths], top_k=3) == one_by_one
        finally:
            decode_pool.DecodePool.ordered = real
        assert calls == [{"ahead": 3}, {"ahead": 3}]
        with pytest.raises(ImageError, match=r"^images\[4\]: .*not a recognised image"):
            predictor.predict(bodies[:4] + [b"junk"] + bodies[4:], top_k=3)
        (tmp_path / "bad.jpg").write_bytes(b"junk")
        with pytest.raises(ImageError, match="bad.jpg"):
            predictor.predict([str(paths[0]), str(tmp_path / "bad.jpg")], top_k=3)
    finally:
        predictor.batch_size = 32
