"""Queries of one image share its encodings: describe_many items and the eval runner (issue 12)."""
import json

from conftest import make_sample


def _images_encoded(model):
    """Hook counting how many images each vision-encoder call encodes."""
    seen = []
    h = model.model.visual.register_forward_hook(lambda mod, args, kw, out: seen.append(len(kw.get("grid_thw", args[1] if len(args) > 1 else []))),
                                                  with_kwargs=True)
    return seen, h


def test_describe_many_items_of_one_image_share_it(tiny):
    from fclm.data.masks import decode_rle
    from fclm.infer import FCLMPipeline

    model, proc, _ = tiny
    s = make_sample()
    img = s.image.open()
    masks = [decode_rle(o.mask) for o in s.objects]
    pipe = FCLMPipeline(model, proc)
    seen, h = _images_encoded(model)
    try:
        out = pipe.describe_many([(img, [m]) for m in masks], detailed=False, max_new_tokens=3)
    finally:
        h.remove()
    assert [len(o) for o in out] == [1, 1, 1]
    assert sum(seen) == 1  # three items, one image: encoded once


def test_eval_runner_groups_roc_queries_by_image(tiny, tmp_path):
    from fclm.eval.runner import predict
    from fclm.infer import FCLMPipeline

    model, proc, _ = tiny
    samples = [make_sample(seed=1), make_sample(seed=2)]  # 3 ROC queries each
    pipe = FCLMPipeline(model, proc)
    seen, h = _images_encoded(model)
    try:
        n = predict(pipe, samples, "roc", str(tmp_path / "p.jsonl"), batch_queries=32, max_new_tokens=2,
                    progress=False)
    finally:
        h.remove()
    assert n == 6
    assert sum(seen) == 2  # one encoding per image, not per query
    ids = [json.loads(line)["id"] for line in open(tmp_path / "p.jsonl")]
    assert sorted(ids) == sorted(f"s{k}#o{i}" for k in (1, 2) for i in range(3))
