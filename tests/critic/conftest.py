"""Fixtures for critic tests: loaded tiny critics (module-cached) and drawn images."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_critic(tiny_critic_dir: Path):  # type: ignore[no-untyped-def]
    """The untrained tiny critic, loaded once; short answers keep tests fast."""
    from firm.critic import Critic

    return Critic.from_pretrained(tiny_critic_dir, max_new_tokens=24)


@pytest.fixture(scope="session")
def formatted_critic(formatted_critic_dir: Path):  # type: ignore[no-untyped-def]
    """The format-taught tiny critic: its answers parse."""
    from firm.critic import Critic

    return Critic.from_pretrained(formatted_critic_dir, max_new_tokens=48)


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated FIRM_HOME (store + cache) for tests that resolve URIs."""
    from firm.config import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("FIRM_HOME", str(home))
    monkeypatch.delenv("FIRM_CONFIG", raising=False)
    monkeypatch.delenv("FIRM_STORE_URI", raising=False)
    get_settings(fresh=True)
    yield home
    get_settings(fresh=True)


@pytest.fixture(autouse=True)
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine spinning threads cost ~10x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
