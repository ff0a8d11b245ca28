"""An in-process subtensor for offline tests of the bittensor adapter.

It implements the parts of the SDK's ``Substrate`` protocol that the adapter's calls reach (reads,
compose, submit) over a small in-memory chain state, and enforces the chain rules those calls are
subject to: registered hotkeys, the validator permit, ``MaxFields`` and 128-byte raw fields.
"""

from __future__ import annotations

from typing import Any

from bittensor.balance import Balance
from bittensor.result import ExtrinsicResult

MAX_FIELDS = 3


class MemorySubstrate:
    def __init__(self, netuid: int = 3, block: int = 1000) -> None:
        self.netuid = netuid
        self.current = block
        self.token_symbols: dict[int, str] = {}
        self.neurons: list[dict[str, Any]] = []  # uid = index
        self.commitments: dict[str, dict[str, Any]] = {}
        self.weights: dict[int, list[tuple[int, int]]] = {}
        self.submitted: list[tuple[Any, str]] = []  # (call, signer address)
        self.commit_reveal = False  # the subnet's CommitRevealWeightsEnabled
        self.owner: str | None = None  # the subnet's SubnetOwnerHotkey
        self.commits: dict[int, dict[str, Any]] = {}  # uid -> its timelocked commit (hidden until revealed)

    # -------------------------------------------------------------------------------- test setup

    def register(self, hotkey: str, stake_tao: float = 0.0, permit: bool = False) -> int:
        self.neurons.append({"hotkey": hotkey, "coldkey": hotkey, "stake": int(stake_tao * 1e9), "permit": permit})
        return len(self.neurons) - 1

    def _uid(self, hotkey: str) -> int | None:
        return next((i for i, n in enumerate(self.neurons) if n["hotkey"] == hotkey), None)

    # --------------------------------------------------------------------------------- lifecycle

    def balance(self, rao: int, netuid: int = 0) -> Balance:
        return Balance.from_rao(rao, netuid)

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # ------------------------------------------------------------------------------------- reads

    async def block_hash(self, block: int | None = None) -> str:
        return f"0x{(self.current if block is None else block):064x}"

    async def block_number(self) -> int:
        return self.current

    async def finalized_block_number(self) -> int:
        return self.current

    async def block_time(self) -> float:
        return 12.0

    async def spec_version(self) -> int:
        return 400

    async def query(self, module: str, name: str, params: list | None = None, block_hash: str | None = None) -> Any:
        params = params or []
        if (module, name) == ("Timestamp", "Now"):  # 12 s blocks from a fixed epoch, in milliseconds
            block = int(block_hash, 16) if block_hash else self.current
            return 1_700_000_000_000 + 12_000 * block
        if (module, name) == ("SubtensorModule", "Uids"):
            return self._uid(params[1])
        if (module, name) == ("SubtensorModule", "ValidatorPermit"):
            return [n["permit"] for n in self.neurons]
        if (module, name) == ("SubtensorModule", "LastUpdate"):
            return [0 for _ in self.neurons]
        if (module, name) == ("SubtensorModule", "SubnetEpochConsensus"):
            return "Yuma"
        if (module, name) == ("SubtensorModule", "SubnetOwnerHotkey"):
            return self.owner
        if (module, name) == ("SubtensorModule", "MaxWeightsLimit"):
            return 65535
        if name == "CommitRevealWeightsEnabled":
            return self.commit_reveal
        if name in ("WeightsSetRateLimit", "MinAllowedWeights"):
            return 0
        schedule = {"Tempo": 360, "RevealPeriodEpochs": 1, "LastEpochBlock": self.current - 10, "PendingEpochAt": 0,
                    "SubnetEpochIndex": self.current // 361, "BlocksSinceLastStep": 10}
        return schedule.get(name) if module == "SubtensorModule" else None

    async def map_has_entries(self, module, name, params, block_hash=None) -> bool:
        return bool(await self.query_map(module, name, params, block_hash))

    async def query_map(self, module: str, name: str, params: list | None = None, block_hash: str | None = None):
        if (module, name) == ("Commitments", "CommitmentOf"):
            return sorted(self.commitments.items())
        if (module, name) == ("SubtensorModule", "Uids"):
            return [(n["hotkey"], uid) for uid, n in enumerate(self.neurons)]
        if (module, name) == ("SubtensorModule", "Weights"):
            return sorted(self.weights.items())
        return []

    async def query_batch(self, module, name, param_sets, block_hash=None) -> list:
        return [await self.query(module, name, p, block_hash) for p in param_sets]

    async def runtime_call(self, api: str, method: str, params: list, block_hash: str | None = None) -> Any:
        if (api, method) != ("SubnetInfoRuntimeApi", "get_metagraph") or params[0] != self.netuid:
            return None
        n = self.neurons
        return {
            "netuid": self.netuid, "name": "gauntlet", "symbol": "G", "block": self.current, "tempo": 360,
            "last_step": self.current - 10, "blocks_since_last_step": 10, "owner_hotkey": n[0]["hotkey"] if n else "",
            "owner_coldkey": n[0]["coldkey"] if n else "", "network_registered_at": 1, "num_uids": len(n),
            "max_uids": 256, "hotkeys": [x["hotkey"] for x in n], "coldkeys": [x["coldkey"] for x in n],
            "validator_permit": [x["permit"] for x in n], "total_stake": [x["stake"] for x in n],
            "active": [True for _ in n], "last_update": [0 for _ in n],
            "incentives": [x.get("incentive", 0) for x in n], "dividends": [x.get("dividends", 0) for x in n],
            "emission": [x.get("emission", 0) for x in n], "alpha_stake": [x["stake"] for x in n],
        }

    async def constant(self, module: str, name: str) -> Any:
        return MAX_FIELDS if (module, name) == ("Commitments", "MaxFields") else None

    async def events(self, block_hash: str | None = None) -> list:
        return []

    # ------------------------------------------------------------------------------------ writes

    async def compose(self, call) -> Any:
        return call

    async def estimate_fee(self, call, keypair) -> Balance:
        return Balance.from_rao(0)

    async def submit(self, call, keypair, **_kwargs) -> ExtrinsicResult:
        self.submitted.append((call, keypair.ss58_address))
        handler = {
            ("Commitments", "set_commitment"): self._set_commitment,
            ("SubtensorModule", "set_mechanism_weights"): self._set_weights,
            ("SubtensorModule", "commit_timelocked_mechanism_weights"): self._commit_weights,
        }.get((call.module, call.function))
        if handler is None:
            return ExtrinsicResult(success=False, message=f"{call.module}.{call.function} is not simulated")
        error = handler(call.params, keypair.ss58_address)
        self.current += 1
        if error:
            return ExtrinsicResult(success=False, message=error)
        return ExtrinsicResult(success=True, message="included", block_hash=await self.block_hash())

    def _set_commitment(self, params: dict, hotkey: str) -> str | None:
        if params["netuid"] != self.netuid or self._uid(hotkey) is None:
            return "AccountNotAllowedCommit"
        fields = params["info"]["fields"]
        if len(fields) > MAX_FIELDS:
            return "TooManyFieldsInCommitmentInfo"
        decoded = []
        for field in fields:
            ((variant, value),) = field.items()
            if not variant.startswith("Raw") or int(variant[3:]) != len(value) or len(value) > 128:
                return f"cannot encode {variant} with {len(value)} bytes"
            decoded.append({variant: "0x" + bytes(value).hex()})
        self.commitments[hotkey] = {"block": self.current, "deposit": 0, "info": {"fields": decoded}}
        return None

    def _set_weights(self, params: dict, hotkey: str) -> str | None:
        uid = self._uid(hotkey)
        if uid is None or not self.neurons[uid]["permit"]:
            return "NeuronNoValidatorPermit"
        self.weights[uid] = list(zip(params["dests"], params["weights"]))
        return None

    def _commit_weights(self, params: dict, hotkey: str) -> str | None:
        uid = self._uid(hotkey)
        if uid is None or not self.neurons[uid]["permit"]:
            return "NeuronNoValidatorPermit"
        if not self.commit_reveal:
            return "CommitRevealDisabled"
        self.commits[uid] = {"commit": bytes(params["commit"]), "reveal_round": params["reveal_round"],
                             "block": self.current}
        return None
