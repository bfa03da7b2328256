"""Every error sae-ts raises on purpose is a SaeTsError, and keeps its builtin base."""

from __future__ import annotations

import inspect

import pytest

from sae_ts import errors


@pytest.mark.parametrize(
    "cls", [c for _, c in inspect.getmembers(errors, inspect.isclass) if c is not errors.SaeTsError]
)
def test_every_error_derives_from_sae_ts_error(cls):
    assert issubclass(cls, errors.SaeTsError)


def test_builtin_compatibility():
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.ArtifactError, ValueError)
    assert issubclass(errors.MissingFileError, FileNotFoundError)
    assert issubclass(errors.UnknownHookError, KeyError)
    assert issubclass(errors.InputTypeError, TypeError)
    assert str(errors.UnknownHookError("hook 'x' is not in the model")) == (
        "hook 'x' is not in the model"
    )


def test_hook_name_errors_are_sae_ts_errors(tiny):
    from sae_ts.steering import steer

    with pytest.raises(errors.SaeTsError), steer(tiny, tiny.W_E[0], "blocks.9.hook_resid_post"):
        pass
