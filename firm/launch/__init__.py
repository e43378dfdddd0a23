"""FIRM launch stage: start entrypoints (critic SFT, RL) as distributed jobs.

- `firm.launch.local`: `torchrun --nproc_per_node N -m MODULE ARGS` on this machine (`run_local`, `torchrun_command`).
- `firm.launch.torchrun_quiet`: torchrun's own launcher, ending a failed run with one `error:` line instead of its
  traceback (what `run_local` runs).

Entrypoints read RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the standard torch.distributed
environment, so a Kubernetes PyTorchJob can run the same module with nothing else.
"""
