"""Track neural collapse of a Hugging Face model trained by `transformers.Trainer`: a tiny ViT built from a config
(nothing downloaded) on the 8×8 digits; the Trainer's MLflowCallback opens the run and ncflow's callback writes
collapse into it.

    python examples/hf_trainer.py --tracking-uri sqlite:///mlflow.db
    ncflow-analysis runs --tracking-uri sqlite:///mlflow.db --experiment ncflow-examples
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from digits import NUM_CLASSES, digits_tensors
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from ncflow import NeuralCollapseTrainerCallback


class DigitImages(Dataset):
    """Items as the Trainer expects them: {"pixel_values": 1×8×8, "labels": int}."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def tiny_vit() -> ViTForImageClassification:
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=NUM_CLASSES)
    return ViTForImageClassification(config)  # the classifier module is `classifier`: Linear(32 → 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--nc1-threshold", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri  # read by the Trainer's MLflowCallback
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "ncflow-examples"
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = digits_tensors()
    train, test = DigitImages(x_train, y_train), DigitImages(x_test, y_test)
    callback = NeuralCollapseTrainerCallback(  # measured on the training and test sets in order, every epoch
        num_classes=NUM_CLASSES, classifier="classifier", train_loader=DataLoader(train, batch_size=512),
        test_loader=DataLoader(test, batch_size=512), arch="tiny-vit", dataset="digits",
        nc1_threshold=args.nc1_threshold)
    with tempfile.TemporaryDirectory() as output:
        training = TrainingArguments(output_dir=output, num_train_epochs=args.epochs, per_device_train_batch_size=64,
                                     per_device_eval_batch_size=256, learning_rate=3e-3, weight_decay=0.05,
                                     seed=args.seed, report_to=["mlflow"], logging_strategy="epoch",
                                     save_strategy="no", eval_strategy="no", use_cpu=True, disable_tqdm=True,
                                     run_name=f"tiny-vit-digits-s{args.seed}")
        trainer = Trainer(model=tiny_vit(), args=training, train_dataset=train, callbacks=[callback])
        trainer.train()
    detector = callback.monitor.detector
    print(f"run {callback.monitor.run_id}: T_NC = {detector.t_nc}, fn* = {detector.fn_star}")


if __name__ == "__main__":
    main()
