"""Run ``topoprune`` and SIGKILL it at a chosen point: ``python killrun.py WHERE:STEP topoprune-args...``.

WHERE is ``step`` (after that training step), ``trainer-save`` (the Trainer has written the
checkpoint's weights, not yet its optimizer), ``masks`` (masks and history written, no completion
mark yet) or ``rotate`` (the checkpoint is complete, older ones not yet rotated away).
"""
import os
import signal
import sys


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    where, step = sys.argv[1].split(":")
    step = int(step)
    import transformers

    import topoprune.train.callbacks as cb

    if where == "step":
        original = cb.NeuroPruneCallback.on_step_end

        def on_step_end(self, args, state, control, **kw):
            out = original(self, args, state, control, **kw)
            if state.global_step == step:
                _die()
            return out

        cb.NeuroPruneCallback.on_step_end = on_step_end
    elif where == "trainer-save":
        original = transformers.Trainer._save_optimizer_and_scheduler

        def save_opt(self, output_dir):
            if self.state.global_step == step:
                _die()
            return original(self, output_dir)

        transformers.Trainer._save_optimizer_and_scheduler = save_opt
    elif where in ("masks", "rotate"):
        name = "mark_complete" if where == "masks" else "rotate"
        original = getattr(cb, name)

        def hook(path, n, *a, **kw):
            if where == "masks" and n == step:
                _die()
            out = original(path, n, *a, **kw)
            if where == "rotate" and any(p.name == f"checkpoint-{step}" for p in
                                         __import__("pathlib").Path(path).iterdir()):
                _die()
            return out

        setattr(cb, name, hook)
    else:
        raise SystemExit(f"unknown kill point {where}")
    from topoprune.cli import main as cli

    sys.argv = ["topoprune", *sys.argv[2:]]
    cli()


if __name__ == "__main__":
    main()
