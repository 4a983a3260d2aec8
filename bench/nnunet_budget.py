"""nnU-Net v2 2d at a fixed budget, for bench/seg_from_scratch.py's `nnunet_2d` row (needs `pip install nnunetv2`).

    python bench/nnunet_budget.py --raw WORK/nnUNet_raw/Dataset501_Stroke --work WORK/nnunet --fold 0 \
        --samples 1750 --batch 10 --patch 128 --pred-out WORK/nnunet_pred

Runs nnU-Net's own pipeline on the dataset export_nnunet.py wrote (the kit's folds as splits_final.json):
nnUNetv2_plan_and_preprocess (2d only), then nnU-Net's trainer with three numbers changed so it trains as many
samples as the kit's row: 25 iterations an epoch (nnU-Net: 250), `samples / (25 x batch)` epochs (1000), and the
batch size and patch side given (the plans' own otherwise); 5 validation iterations an epoch (50). Everything
else is nnU-Net's: its network for the plans, SGD + Nesterov 0.99, poly LR, Dice + CE with deep supervision,
its augmentation and foreground oversampling. Its full validation of the fold (sliding window and mirroring over
every validation slice) is skipped for CPU time: the OOF figure is its last epoch's pseudo Dice per class (on
validation patches). The final checkpoint then predicts the raw dataset's imagesTs into --pred-out (label PNGs), which the kit's bridge
turns into a submission. Trainer classes outside nnunetv2's folder cannot be named on nnU-Net's command line, so
this script builds its trainer itself, as nnunetv2.run.run_training does.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ITERATIONS = 25       # per epoch (nnU-Net: 250)
VAL_ITERATIONS = 5    # per epoch (nnU-Net: 50), only for its progress curve


def plan(raw: Path, work: Path, batch: int | None, patch: int | None) -> Path:
    """nnUNetv2_plan_and_preprocess for 2d; returns the preprocessed dataset folder (plans edited)."""
    dataset_id = raw.name.split("_")[0].removeprefix("Dataset")
    pre = Path(os.environ["nnUNet_preprocessed"]) / raw.name
    if not (pre / "nnUNetPlans.json").is_file():
        subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", "2d", "-np", "1", "-npfp", "1"],
                       check=True)
    plans_file = pre / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    config = plans["configurations"]["2d"]
    if batch:
        config["batch_size"] = batch
    if patch:
        config["patch_size"] = [patch, patch]
    plans_file.write_text(json.dumps(plans, indent=1))
    (raw / "splits_final.json").is_file() and (pre / "splits_final.json").write_text(
        (raw / "splits_final.json").read_text())
    return pre


def train_and_predict(pre: Path, raw: Path, fold: int, samples: int, pred_out: Path) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # what run_training adds before building a trainer
    dataset_json = json.loads((pre / "dataset.json").read_text())
    batch = plans["configurations"]["2d"]["batch_size"]
    epochs = max(1, round(samples / (ITERATIONS * batch)))

    class BudgetTrainer(nnUNetTrainer):  # nnU-Net reads its __init__'s signature: keep the base's parameters
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = ITERATIONS
            self.num_val_iterations_per_epoch = VAL_ITERATIONS
            self.num_epochs = epochs

    trainer = BudgetTrainer(plans=plans, configuration="2d", fold=fold, dataset_json=dataset_json,
                            device=torch.device("cpu"))
    trainer.run_training()
    trainer.set_deep_supervision_enabled(False)  # (what nnU-Net's own validation and predictor do)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                    [trainer.network.state_dict()], dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    predictor.predict_from_files(str(raw / "imagesTs"), str(pred_out), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    pseudo_dice = trainer.logger.get_value("dice_per_class_or_region", step=-1)
    return {"epochs": epochs, "iterations_per_epoch": ITERATIONS, "batch_size": batch,
            "patch_size": plans["configurations"]["2d"]["patch_size"], "samples": epochs * ITERATIONS * batch,
            "val_dice": {"ischemic": float(pseudo_dice[0]), "hemorrhagic": float(pseudo_dice[1])},
            "output_folder": str(trainer.output_folder)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, required=True, help="nnUNet_raw/Dataset<id>_<name> from export_nnunet.py")
    parser.add_argument("--work", type=Path, required=True, help="holds nnUNet_preprocessed and nnUNet_results")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--samples", type=int, required=True, help="training samples (epochs x iterations x batch)")
    parser.add_argument("--batch", type=int, default=10, help="batch size (default 10; 0 = the plans')")
    parser.add_argument("--patch", type=int, default=0, help="patch side in px (default 0 = the plans')")
    parser.add_argument("--pred-out", type=Path, required=True, help="label PNGs of imagesTs go here")
    parser.add_argument("--out-json", type=Path, required=True)
    args = parser.parse_args(argv)
    os.environ["nnUNet_raw"] = str(args.raw.parent)
    os.environ["nnUNet_preprocessed"] = str(args.work / "nnUNet_preprocessed")
    os.environ["nnUNet_results"] = str(args.work / "nnUNet_results")
    pre = plan(args.raw, args.work, args.batch or None, args.patch or None)
    result = train_and_predict(pre, args.raw, args.fold, args.samples, args.pred_out)
    args.out_json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
