"""Known-answer tests for ROC (Osprey SS/sIoU) and DLC-Bench scoring (DAM)."""
import pytest

from fclm.eval.metrics import dlc
from fclm.eval.metrics.roc import clean_prediction, clean_reference, roc_scores, semantic_iou
from fclm.eval.metrics.text_sim import SentenceModelError, load_sentence_model, load_text_encoder


from conftest import TableEncoder  # noqa: E402


def test_roc_text_cleanup_matches_osprey():
    assert clean_prediction("  Category: dog, brown. ") == " dog  brown "  # split(':')[1] keeps the middle
    assert clean_prediction("a: b: c") == " b"
    assert clean_prediction("Dog.") == "Dog "
    assert clean_reference("dog:head") == "dog head"
    assert clean_reference("bow_(weapon)") == "bow (weapon)"


def test_semantic_iou():
    assert semantic_iou("Brown dog", "dog") == 0.5
    assert semantic_iou("dog dog", "DOG") == 1.0
    assert semantic_iou("", "") == 0.0
    assert semantic_iou("", "cat") == 0.0


def test_roc_scores_known_answer_with_fake_encoder():
    enc = TableEncoder({"dog": [1, 0], "dog ": [1, 0], "cat": [0, 1], "car": [1, 1], "dog head": [1, 0]})
    r = roc_scores(["dog.", "car", "cat"], ["dog", "cat", "dog:head"], encoder=enc)
    # SS: cos(dog, dog)=1, cos(car, cat)=1/sqrt2, cos(cat, dog head)=0
    assert r["SS"] == pytest.approx(100 * (1 + 2 ** -0.5 + 0) / 3)
    # sIoU: {dog}/{dog}=1, {car}/{cat}=0, {cat} vs {dog, head}=0
    assert r["sIoU"] == pytest.approx(100 / 3)


def test_roc_ss_with_real_minilm_matches_sentence_transformers():
    from sentence_transformers import util

    enc = load_text_encoder(None)
    r = roc_scores(["a dog", "Category: traffic light."], ["a dog", "traffic_light"], encoder=enc)
    model = load_sentence_model()
    direct = float(util.cos_sim(model.encode(" traffic light ", convert_to_tensor=True),
                                model.encode("traffic light", convert_to_tensor=True))[0][0])
    assert r["per_object"][0][0] == pytest.approx(1.0, abs=1e-5)
    assert r["per_object"][1][0] == pytest.approx(direct, abs=1e-5)
    assert r["SS"] == pytest.approx(100 * (1 + direct) / 2, abs=1e-3)


def test_missing_sentence_model_is_a_clear_error(tmp_path):
    with pytest.raises(SentenceModelError, match="not found or empty"):
        load_sentence_model(str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------------------ DLC
def test_parse_choice_follows_dam():
    ch = ["The dog is brown", "The dog is black", "Not mentioned"]
    assert dlc.parse_choice("The dog is brown", ch) == 0
    assert dlc.parse_choice("b. the dog is black", ch) == 1
    assert dlc.parse_choice("C", ch) == 2
    assert dlc.parse_choice("Answer: not mentioned.", ch) == 2        # one choice contained
    assert dlc.parse_choice("A. something else", ch) == 0             # "a." prefix
    assert dlc.parse_choice("the dog is brown or the dog is black", ch) == 1  # last occurrence
    assert dlc.parse_choice("black", ch) == 1                         # reply inside one choice
    assert dlc.parse_choice("I cannot tell from the text", ch) is None  # names no option
    assert dlc.parse_choice("", ch) is None
    assert dlc.parse_choice("e. whatever", ch) is None                # letter beyond the choices
    assert dlc.parse_choice("Yes", ["Yes", "No"]) == 0


def test_recognition_questions_equal_dams_on_the_real_class_list():
    """All 100 DLC-Bench class names give exactly the question DAM's own evaluation sent (its
    cached dam_3b_v1_eval.json), including the names that simple rules get wrong."""
    import json
    import os

    with open(os.path.join(os.path.dirname(__file__), "fixtures", "dlc_bench_recognition_questions.json")) as f:
        regions = json.load(f)["regions"]
    assert len(regions) == 100
    for key, r in regions.items():
        assert dlc.recognition_question(r["class_name"])["question"] == r["question"], key
    names = {r["class_name"] for r in regions.values()}
    assert {"herb", "wine glass", "scissors", "suv"} <= names


def test_recognition_question_and_prompt_text():
    q = dlc.recognition_question("apple")["question"]
    assert q.startswith("Is it likely that the object in the description is an apple or an object")
    assert "objects in the description are shoes" in dlc.recognition_question("shoes")["question"]
    assert "is a bus or" in dlc.recognition_question("bus")["question"]
    p = dlc.format_prompt("A brown dog.", {"question": "What color?", "choices": [["brown", 1], ["black", -1]]})
    assert p.endswith("The description is:\nA brown dog.\n\nFrom the description above, please answer the "
                      "following question with one of the choices:\nWhat color?\nA. brown\nB. black\n")
    assert p.startswith("Answer the multiple-choice question based on the text description of an object")


QA = {
    "1": [{"question": "Color?", "type": "positive", "choices": [["brown", 1], ["brown-ish", 0.5], ["not mentioned", 0], ["black", -1]]},
          {"question": "Collar?", "type": "negative", "choices": [["not mentioned", 1], ["mentioned", -1]]}],
    "2": [{"question": "Color?", "type": "positive", "choices": [["brown", 1], ["black", -1]]},
          {"question": "Hat?", "type": "negative", "choices": [["not mentioned", 1], ["mentioned", -1]]}],
    "3": [{"question": "Tail?", "type": "positive", "choices": [["long tail", 1], ["no tail", -1]]},
          {"question": "Ears?", "type": "positive", "choices": [["pointy", 1], ["floppy", -1]]}],
}


def test_score_region_gate_and_unparseable():
    qs = dlc.region_questions("dog", QA["1"])
    r = dlc.score_region("1", qs, ["Yes", "B", "A"])
    assert (r.pos, r.neg, r.recognized, r.n_unparseable) == (0.5, 1.0, True, 0)
    r = dlc.score_region("1", qs, ["No", "A", "A"])  # not recognised: scores capped at 0
    assert (r.pos, r.neg, r.recognized) == (0.0, 0.0, False)
    r = dlc.score_region("1", qs, ["No", "D", "B"])  # negative scores stay negative
    assert (r.pos, r.neg) == (-1.0, -1.0)
    r = dlc.score_region("1", qs, ["Yes", "no idea", "A"])  # unparseable -> 0, counted
    assert (r.pos, r.neg, r.n_unparseable) == (0.0, 1.0, 1)
    r = dlc.score_region("1", qs, ["hmm", "A", "A"])  # unparseable recognition -> not recognised
    assert (r.pos, r.neg, r.recognized, r.n_unparseable) == (0.0, 0.0, False, 1)


def test_evaluate_dlc_known_answer_and_missing():
    gt = dlc.DLCBenchGT(qa=QA, class_names={"1": "dog", "2": "cat", "3": "dog"})
    replies = iter(["Yes", "A", "A",      # region 1: pos 1, neg 1
                    "No", "A", "B",       # region 2: not recognised: pos min(0,1)=0, neg min(0,-1)=-1
                    "Yes", "A", "zzz"])   # region 3: pos (1 + 0) / 2, no negatives
    out = dlc.evaluate_dlc({"1": "a dog", "2": "a dog", "3": "a dog"}, gt, lambda ps: [next(replies) for _ in ps])
    m = out["metrics"]
    assert m["Pos"] == pytest.approx(100 * (1 + 0 + 0.5) / 3)
    assert m["Neg"] == pytest.approx(100 * (1 - 1) / 2)
    assert m["Avg"] == pytest.approx((m["Pos"] + m["Neg"]) / 2)
    assert out["counts"]["unparseable_replies"] == 1
    assert out["counts"]["not_recognized"] == 1 and out["counts"]["regions_with_negatives"] == 2
    from fclm.data.schema import FCLMDataError

    with pytest.raises(FCLMDataError, match="no usable description"):
        dlc.evaluate_dlc({"1": "a dog", "2": "Error: timeout"}, gt, lambda ps: ["Yes"] * len(ps))
    out = dlc.evaluate_dlc({"1": "a dog"}, gt, lambda ps: ["Yes" if "Is it likely" in p else "A" for p in ps],
                           default_prediction="")
    assert out["counts"]["missing_predictions"] == 2


def test_inflect_version_outside_the_tested_range_is_refused(monkeypatch):
    import importlib.metadata

    from fclm.data.schema import FCLMDataError

    monkeypatch.setattr(dlc, "_ENGINE", None)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "7.6.0")
    monkeypatch.delenv("FCLM_ALLOW_ANY_INFLECT", raising=False)
    with pytest.raises(FCLMDataError, match="inflect 7.6.0"):
        dlc.recognition_question("wine glass")
    monkeypatch.setenv("FCLM_ALLOW_ANY_INFLECT", "1")
    assert dlc.recognition_question("dog")["question"].startswith("Is it likely that the object in the description is a dog")


def test_load_dlc_bench_from_the_release_folder(tmp_path):
    import json

    from fclm.eval.score import load_ground_truth

    ann = tmp_path / "DLC-bench" / "annotations"
    ann.mkdir(parents=True)
    (tmp_path / "DLC-bench" / "images").mkdir()
    (ann / "qa.json").write_text(json.dumps({"7": [{"question": "Q?", "type": "positive", "choices": [["a", 1], ["b", -1]]}]}))
    (ann / "class_names.json").write_text(json.dumps({"7": "lamp"}))
    gt = load_ground_truth("dlc", str(tmp_path / "DLC-bench"))
    assert gt.class_names == {"7": "lamp"} and list(gt.qa) == ["7"] and gt.source == str(ann)
