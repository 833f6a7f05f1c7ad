"""The reliability tests' tiny training configuration; the subprocess and composition helpers are the
suite's own (tests/cli_helpers.py), re-exported here."""

from __future__ import annotations

from cli_helpers import compose_cfg, run_cli, start_cli  # noqa: F401 - re-exported

# Seconds per run on one thread: a 3-step VAE of 8 channels, a 1+1 layer T5 of width 32, 24 training lines
# of 3 writers in batches of 4 (6 steps per epoch), no OCR or held-out evaluation.
TINY = [
    "task=train",
    "data.lines_per_writer={train:8,val:2,test:2}",
    "data.writers_per_font=3",
    "data.fonts=[fontpkg_caveat,fontpkg_delius,fontpkg_kalam,fontpkg_satisfy]",
    "data.batch_size=4",
    "vae.pretrained=null",  # the demo's bundled VAE aside: a 3-step VAE of their own
    "heldout.compare_with=null",
    "vae.train.max_steps=3",
    "vae.train.eval_lines=4",
    "vae.train.stop_lines=8",
    "vae.arch.block_out_channels=[8,8,8,8]",
    "vae.arch.norm_num_groups=4",
    "model.t5.d_model=32",
    "model.t5.d_ff=64",
    "model.t5.num_layers=1",
    "model.t5.num_decoder_layers=1",
    "model.t5.num_heads=2",
    "model.t5.d_kv=16",
    "model.max_new_columns=8",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.deterministic=true",
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "callbacks.generation_samples.every_n_steps=100",
    "heldout.num_lines=2",
    "heldout.evaluate=false",
    "metrics.enabled=false",  # no legibility curve (OCR) during training
    "data.curriculum.steps=0",  # exact resumes and DDP: the curriculum is single-process, per-step sampling
]
