"""Why a calibration leaves nothing to apply, said exactly (the pipeline's last lines)."""

from autopack_pipeline.services.calibration_review import apply_instructions, no_patch_reason

CLOSED = {"gate": {"open": False, "summary": "Calibration gate closed: 12 clean samples < 20"}}


def _group(**fields):
    return {"category": "tests", "complexity": "low", "status": "thin", "prediction_multiplier": 1.0,
            "current_prediction_multiplier": 1.0, "budget_margin": None, "budget_floor": 4096,
            "previous_budget_floor": 4096, **fields}


def test_a_closed_gate_is_the_reason():
    assert no_patch_reason(CLOSED) == "no patch: Calibration gate closed: 12 clean samples < 20"


def test_an_open_gate_with_no_change_names_each_groups_reason():
    outcome = {"gate": {"open": True, "summary": "open"}, "calibration": {"groups": [_group()]},
               "result": {"groups": [{"category": "tests", "complexity": "low", "actionable": False,
                                      "note": "7 clean samples, 19 needed for a bound of its own"}],
                          "below_threshold": []}}
    assert no_patch_reason(outcome) == ("no group has a proposal: tests/low: 7 clean samples, 19 needed for a "
                                        "bound of its own")


def test_a_floor_raise_or_an_actionable_group_is_a_patch():
    base = {"gate": {"open": True, "summary": "open"}, "result": {"groups": [], "below_threshold": []}}
    assert no_patch_reason(base | {"calibration": {"groups": [_group(budget_floor=8192)]}}) is None
    assert no_patch_reason(base | {"result": {"groups": [{"actionable": True}]}}) is None


def test_apply_instructions_name_the_command_and_the_ui_job():
    lines = "\n".join(apply_instructions("/r/p.json"))
    assert "apply-calibration /r/p.json --dry-run" in lines and "apply-calibration /r/p.json --yes" in lines
    assert "apply_calibration_job" in lines and "confirm: true" in lines
