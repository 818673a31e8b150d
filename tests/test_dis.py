"""DIS flow presets: ``dis-fine`` estimates patch flow down to the input's own grid."""
import numpy as np
import pytest

from vosbatch.flow import create_flow
from support.synthetic import make_video


@pytest.mark.parametrize("seed", [0, 1])
def test_fine_preset_resolves_a_thin_object_that_medium_blurs(seed):
    # a 6-px-wide ellipse moving against a panning background: medium's flow stops one pyramid level
    # above the input, so the object's motion is a few flow cells wide and blurs into the background's
    vid = make_video(frames=3, size=(96, 128), obj_size=(20, 3), obj_velocity=(3.0, 1.0), bg_velocity=(-1.0, 0.5),
                     seed=seed)
    inside = vid.masks[:-1]
    error = {}
    for name in ("dis", "dis-fine"):
        flow = create_flow(name)(vid.frames)
        assert flow.forward.shape == vid.forward.shape and flow.backward.shape == vid.backward.shape
        error[name] = np.linalg.norm(flow.forward - vid.forward, axis=-1)
    assert error["dis-fine"][inside].mean() < 0.5 * error["dis"][inside].mean()
    assert error["dis-fine"][inside].mean() < 1.0  # px; the object moves 3.2 px per frame
    assert error["dis-fine"][~inside].mean() < 0.2


def test_unknown_dis_preset_is_refused():
    from vosbatch.flow.dis import DISFlow

    with pytest.raises(ValueError, match="unknown DIS preset 'finest'"):
        DISFlow("finest")
