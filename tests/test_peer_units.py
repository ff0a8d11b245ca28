import pytest
import torch

from gauntlet.config import InnerConfig, SparseLoCoConfig
from gauntlet.identity import Identity
from gauntlet.sparseloco import ErrorFeedback, encode_message
from gauntlet.storage import FileStore, keys
from peers.cli import build_parser, main
from peers.network.gather import gather
from peers.node.state_files import LocalState, StateError, load_local, parse_state_meta, save_local, state_meta
from peers.node.training import InnerTrainer, lr_at

RUN = "r"
CFG = SparseLoCoConfig()
SPEC = {"w": (64, 64), "b": (8,)}


def test_inner_lr_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    cfg = InnerConfig(lr=1.0, warmup_steps=4, decay_steps=10, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg) == pytest.approx(1.0)
    assert lr_at(9, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.5)).item()))
    assert lr_at(14, cfg) == pytest.approx(0.1) and lr_at(1000, cfg) == pytest.approx(0.1)
    assert lr_at(50, InnerConfig(lr=0.3, warmup_steps=0, schedule="constant")) == 0.3


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))


def save_state(run_dir, state, model, ef, opt):
    """What a one-process peer saves after each window (engine.state.save with the peer's meta)."""
    save_local(run_dir / "state.safetensors", model, ef, opt, state_meta(state))


def load_state(run_dir, model, ef, opt, run):
    """What a one-process peer restores when it starts."""
    path = run_dir / "state.safetensors"
    return parse_state_meta(load_local(path, model, ef, opt, run), path, run)


def test_state_round_trips_atomically_and_refuses_foreign_files(tmp_path):
    model = _model()
    ef = ErrorFeedback({n: p.shape for n, p in model.named_parameters()}, CFG)
    ef.compress({n: torch.randn(p.shape) for n, p in model.named_parameters()})
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.tensor([1, 2])).sum().backward()
    opt.step()
    save_state(tmp_path, LocalState(7, 31, RUN), model, ef, opt)
    assert not list(tmp_path.glob(".*partial"))  # no temporary file left behind

    model2 = _model()
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    ef2 = ErrorFeedback({n: p.shape for n, p in model2.named_parameters()}, CFG)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    state = load_state(tmp_path, model2, ef2, opt2, RUN)
    assert (state.window, state.inner_step) == (7, 31)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert all(torch.equal(ef.buffers[n], ef2.buffers[n]) for n in ef.buffers)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    assert load_state(tmp_path / "none", model2, ef2, opt2, RUN) is None
    with pytest.raises(StateError, match="another --run-dir"):
        load_state(tmp_path, model2, ef2, opt2, "other-run")
    wider = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 32))  # another model's state
    with pytest.raises(StateError, match=r"tensor model.1.weight is \(16, 8\), not \(32, 8\)"):
        load_local(tmp_path / "state.safetensors", wider, None, None, RUN)
    with pytest.raises(StateError, match="no tensor model.2.weight"):
        load_local(tmp_path / "state.safetensors", torch.nn.Sequential(*model, torch.nn.Linear(16, 2)), None, None)
    (tmp_path / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(StateError, match="cannot read"):
        load_state(tmp_path, model2, ef2, opt2, RUN)


def test_inner_trainer_steps_once_per_batch_and_lowers_the_loss():
    model = _model()
    trainer = InnerTrainer(_HF(model), InnerConfig(lr=0.05, warmup_steps=0), bf16=False)
    batches = [torch.randint(0, 16, (4, 6)) for _ in range(1)] * 30
    first = trainer.train(batches[:1])
    last = trainer.train(batches)
    assert trainer.step == 31 and last < first


class _HF(torch.nn.Module):
    """A minimal causal LM with the transformers call signature."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, labels):
        logits = self.inner(input_ids)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), labels[:, 1:].reshape(-1))
        return type("Out", (), {"loss": loss})()


def _publish(store, ident, window, **kw):
    cts = ErrorFeedback(SPEC, CFG).compress({n: torch.randn(s) for n, s in SPEC.items()})
    store.put(keys.message(RUN, window, ident.hotkey), encode_message(cts, window=window, run=RUN, codec=CFG,
                                                                      signer=ident, **kw))


def test_gather_classifies_every_peer_by_whose_fault_it_is(tmp_path):
    ids = {n: Identity.from_seed(n) for n in ("ok", "late", "bad", "absent", "stranger")}
    now = [1_700_000_000.0]  # the stores' clock: uploads are stamped with it
    stores = {n: FileStore(tmp_path / n, clock=lambda: now[0]) for n in ids}
    slot = (now[0] - 1, now[0] + 10)
    _publish(stores["ok"], ids["ok"], 3)
    _publish(stores["bad"], ids["ok"], 3)  # signed by someone else
    copied = stores["bad"].get(keys.message(RUN, 3, ids["ok"].hotkey))
    stores["bad"].put(keys.message(RUN, 3, ids["bad"].hotkey), copied)
    now[0] = slot[1] + 0.5  # after the slot closed
    _publish(stores["late"], ids["late"], 3)
    _publish(stores["stranger"], ids["stranger"], 3)
    registered = {ids[n].hotkey for n in ("ok", "late", "bad", "absent")}
    result = gather(3, {ids[n].hotkey: stores[n] for n in ids}, run=RUN, run_hash=RUN, registered=registered,
                    spec=SPEC, codec=CFG, slot=slot, max_bytes=1 << 20, timeout=30)
    assert list(result.messages) == [ids["ok"].hotkey]
    assert list(result.outside_slot) == [ids["late"].hotkey]
    assert set(result.invalid) == {ids["bad"].hotkey, ids["stranger"].hotkey}
    assert "another hotkey" in result.invalid[ids["bad"].hotkey]
    assert "not registered" in result.invalid[ids["stranger"].hotkey]
    assert result.missing == [ids["absent"].hotkey] and not result.failed
    anytime = gather(3, {ids["late"].hotkey: stores["late"]}, run=RUN, run_hash=RUN, registered=registered,
                     spec=SPEC, codec=CFG, slot=None, max_bytes=1 << 20, timeout=30)
    assert list(anytime.messages) == [ids["late"].hotkey]


def test_peer_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["peer", "--help"])
    text = capsys.readouterr().out
    peer = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "peer")[1]
    for action in peer._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 10, f"{action.option_strings} is undocumented"
            assert action.option_strings[0] in text
    for flag in ("--wallet.name", "--wallet.hotkey", "--netuid", "--subtensor.network", "--config"):
        assert flag in text


@pytest.mark.parametrize("args, fragment", [
    (["--set", "inner.steps=0"], "inner.steps"),
    (["--set", "timing.upload_slot_s=fast"], "timing.upload_slot_s"),
    ([], "no identity"),
])
def test_bad_peer_settings_get_a_clear_error(tmp_path, capsys, args, fragment):
    base = ["peer", "--storage", f"file://{tmp_path}/s", "--chain", f"local://{tmp_path}/c.db", "--run-dir",
            str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")]
    if fragment != "no identity":
        base += ["--identity-seed", "x"]
    assert main(base + args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err


def test_s3_peers_must_name_a_read_only_key(tmp_path, capsys, moto_port):
    code = main(["peer", "--identity-seed", "x", "--chain", f"local://{tmp_path}/c.db", "--storage",
                 f"s3://b?endpoint_url=http://127.0.0.1:{moto_port}", "--run-dir", str(tmp_path / "r")])
    assert code == 1 and "read-only key" in capsys.readouterr().err
