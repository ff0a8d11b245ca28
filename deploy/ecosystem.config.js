// pm2 ecosystem file for a Gauntlet peer and validator: `pm2 start ecosystem.config.js`,
// `pm2 logs`, `pm2 save && pm2 startup` to survive reboots. Install log rotation with
// `pm2 install pm2-logrotate` (e.g. `pm2 set pm2-logrotate:max_size 100M`).
// Secrets come from the environment pm2 is started with (see gauntlet.env.example), not from here.
const venv = "/opt/gauntlet/.venv/bin/gauntlet";
// The run's settings come from the subnet owner's manifest (fetched, verified, cached in --run-dir);
// this machine's own settings go in --set (e.g. "--set", "model.device=cuda:0") or a --config file.
const common = ["--manifest", "chain", "--subtensor.network", "finney", "--netuid", "3",
  "--storage", process.env.GAUNTLET_STORAGE, "--data-dir", "/var/lib/gauntlet/data"];

module.exports = {
  apps: [
    {
      name: "gauntlet-peer",
      script: venv,
      args: ["peer", "--wallet.name", "miner", "--wallet.hotkey", "default", "--run-dir", "/var/lib/gauntlet/peer",
        "--metrics.port", "9100", "--nproc", "8", "--retain", "28", ...common],
      interpreter: "none",
      kill_timeout: 300000, // ms: SIGTERM lets the node finish its step and save (it saves every window)
      autorestart: true,
      restart_delay: 30000,
    },
    {
      name: "gauntlet-validator",
      script: venv,
      args: ["validate", "--wallet.name", "validator", "--wallet.hotkey", "default",
        "--run-dir", "/var/lib/gauntlet/validator", "--metrics.port", "9101", "--retain", "28", ...common],
      interpreter: "none",
      kill_timeout: 300000,
      autorestart: true,
      restart_delay: 30000,
    },
  ],
};
