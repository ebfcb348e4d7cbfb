"""Tiny in-memory data sets for model tests: one bright block an image, at a random place."""

from __future__ import annotations

import torch


class Blocks(torch.utils.data.Dataset):
    """``num_images`` dark ``size x size`` images, each with one bright block (class 1 red, class 2
    green) of 14-29 pixels at a random position; ``empty_every``: every k-th image has no block."""

    def __init__(self, num_images: int, seed: int, size: int = 64, empty_every: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.classes = ["red", "green"]
        self.items = []
        for index in range(num_images):
            image = torch.rand(3, size, size, generator=generator) * 0.2
            if empty_every and index % empty_every == empty_every - 1:
                target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
            else:
                label = 1 + index % 2
                width, height = torch.randint(14, 30, (2,), generator=generator).tolist()
                x = int(torch.randint(0, size - width, (1,), generator=generator))
                y = int(torch.randint(0, size - height, (1,), generator=generator))
                image[label - 1, y : y + height, x : x + width] = 1.0
                target = {
                    "boxes": torch.tensor([[x, y, x + width, y + height]], dtype=torch.float32),
                    "labels": torch.tensor([label]),
                }
            self.items.append((image, {**target, "image_id": index}))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]
