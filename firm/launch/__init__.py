"""FIRM launch stage: start entrypoints (critic SFT, RL) as distributed jobs, on this machine or on Kubernetes.

- `firm.launch.spec`: the one job spec (`JobSpec`, YAML + `key=value` overrides) and `resolve_job`, which checks it
  against its node pool and recipe and fixes the command, environment and checkpoint prefix every backend runs.
- `firm.launch.cluster`: node pools, images, Secret and ConfigMap names (`FirmSettings.cluster`).
- `firm.launch.render`: the Kubeflow `PyTorchJob` of a resolved job (kubeflow-training SDK models).
- `firm.launch.backend`: the `JobBackend` interface (submit, status, wait, logs, cancel, list);
  `firm.launch.local_backend.LocalBackend` (torchrun, detached, `$FIRM_HOME/jobs/`) and
  `firm.launch.pytorchjob.PyTorchJobBackend` (Training Operator through `TrainingClient`), chosen by name with
  `firm.launch.backends.get_backend`.
- `firm.launch.local`: `torchrun --nproc_per_node N -m MODULE ARGS` in the foreground (`run_local`, used by
  `firmctl critic train` / `rl train --nproc N`).
- `firm.launch.kfp_run`: inside a KFP step, whether its run was terminated (only then does a stopped launcher step
  cancel its job; otherwise a restarted step re-attaches to it); `MIN_KFP_VERSION`.
- `firm.launch.doctor`: `cluster_doctor`, what `firmctl cluster doctor` checks (operators, RBAC, Secrets/ConfigMaps,
  Istio, node pools, the object store).
- `firm.launch.torchrun_quiet`: torchrun's own launcher, ending a failed run with one `error:` line instead of its
  traceback, and with exit codes the `ExitCode` restart policy understands.

Entrypoints read RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the standard torch.distributed
environment, so a Kubernetes PyTorchJob runs the same module with nothing else.
"""
