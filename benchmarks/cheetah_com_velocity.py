"""Same HalfCheetahVel trajectories, two rewards: the root's displacement / dt (fastmaml's, HalfCheetah-v5's
``x_velocity``) against the torso subtree's centre-of-mass velocity after the step (rllab's
``get_body_comvel("torso")``, the velocity in cbfinn/maml_rl's reward).

    python benchmarks/cheetah_com_velocity.py RUN_DIR FRAME_SKIP

RUN_DIR holds a ``cheetah-vel`` checkpoint; its policy (before adaptation) runs 3 episodes on each of 8 tasks.
"""

import sys

import numpy as np
import torch

from fastmaml.rl.locomotion import CTRL_COST, HalfCheetahVel, torso_com
from fastmaml.rl.policies import GaussianPolicy, sample


def main(run: str, frame_skip: int) -> None:
    torch.set_num_threads(1)
    checkpoint = torch.load(f"{run}/checkpoint.pt", weights_only=False)
    policy = GaussianPolicy(17, 6, (100, 100))
    policy.load_state_dict(checkpoint["policy"])
    family = HalfCheetahVel(frame_skip=frame_skip)
    tasks = family.sample_tasks(8, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(3)
    ours, paper, jitter = [], [], []
    for task in tasks:
        env = family.make_env(task)
        model, data = env.unwrapped.model, env.unwrapped.data
        for _ in range(3):
            obs, _ = env.reset(seed=int(torch.randint(0, 10**6, (1,), generator=generator)))
            root_return = com_return = 0.0
            root_v, com_v = [], []
            for _ in range(200):
                with torch.no_grad():
                    action = sample(policy(torch.as_tensor(obs, dtype=torch.float32)), generator).numpy()
                obs, reward, _, _, info = env.step(action)
                velocity = float(torso_com(model, data.qpos[None], data.qvel[None])[0, 3])  # the whole cheetah's
                control = CTRL_COST * float((np.clip(action, -1, 1) ** 2).sum())
                root_return += reward
                com_return += -abs(velocity - task["velocity"]) - control
                root_v.append(info["x_velocity"])
                com_v.append(velocity)
            ours.append(root_return)
            paper.append(com_return)
            jitter.append((np.std(np.diff(root_v)), np.std(np.diff(com_v))))
    difference = np.array(paper) - np.array(ours)
    print(f"frame_skip {frame_skip}, iteration {checkpoint['iteration']}, policy before adaptation, "
          f"{len(ours)} episodes of {len(tasks)} tasks")
    print(f"return with the root's velocity {np.mean(ours):.1f}, with the centre of mass's {np.mean(paper):.1f}: "
          f"difference {difference.mean():.1f} ± {1.96 * difference.std() / np.sqrt(len(ours)):.1f}")
    print("std of the step-to-step velocity change: root %.3f, centre of mass %.3f" % tuple(np.mean(jitter, 0)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
