"""Config merging, CLI parsing and the errors a user can cause."""
import pytest
import torch

import tools
from tools import ConfigError


def cfg(*argv):
    return tools.make_config(list(argv))


def test_presets_merge_in_order():
    c = cfg('--configs', 'defaults', 'dmc2gym', 'debug')
    assert c.reward_scale == 2.0 and c.batch_size == 4 and c.time_limit == 200   # debug overrides dmc2gym
    c = cfg('--configs', 'defaults', 'debug', 'dmc2gym')
    assert c.time_limit == 1000                                                   # later preset wins
    c = cfg('--configs', 'defaults', 'gymnasium')
    assert c.color.step_std == 0.1 and c.color.max_delta == 0.2                   # nested merge keeps siblings


def test_paper_hyperparameters_are_defaults():
    c = cfg()
    assert (c.batch_size, c.batch_length, c.z_dim, c.beta_vae_beta) == (50, 50, 20, 0.015)
    assert (c.model_lr, c.actor_lr, c.value_lr) == (3e-4, 8e-5, 8e-5)
    assert (c.imag_horizon, c.discount, c.discount_lambda) == (15, 0.99, 0.95)
    assert (c.dyn_stoch, c.dyn_deter, c.dyn_hidden) == (50, 200, 200)
    assert (c.kl_balance, c.kl_free) == (0.8, 1.0)
    assert c.steps == 1_000_000 and isinstance(c.steps, int)


@pytest.mark.parametrize('text,value', [('True', True), ('true', True), ('1', True), ('False', False),
                                        ('false', False), ('0', False)])
def test_bool_forms(text, value):
    assert cfg('--traverse', text).traverse is value


def test_value_types():
    c = cfg('--steps', '1e5', '--model_lr', '1e-3', '--seed', '3', '--size', '32,32', '--checkpoint', 'None',
            '--color.max_delta', '0.1', '--color.train_base', '0.1,0.2,0.3', '--task', 'dmc2gym_cheetah_run')
    assert c.steps == 100_000 and isinstance(c.steps, int)
    assert c.model_lr == 1e-3 and c.seed == 3 and c.size == [32, 32] and c.checkpoint is None
    assert c.color.max_delta == 0.1 and c.color.train_base == [0.1, 0.2, 0.3]
    assert c.task == 'dmc2gym_cheetah_run'
    assert cfg('--size', '48', '48').size == [48, 48]          # space-separated lists work too
    assert cfg('--seed=5').seed == 5
    assert cfg('--distill_floor', '-1').distill_floor == -1.0  # negative numbers are values, not flags


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match="batch_size"):
        cfg('--batch_sise', '8')
    with pytest.raises(ConfigError, match="max_delta"):
        cfg('--color.max_delt', '0.1')


def test_unknown_preset_names_closest():
    with pytest.raises(ConfigError, match="dmc2gym"):
        cfg('--configs', 'defaults', 'dmc2gm')


def test_bad_value_type():
    with pytest.raises(ConfigError, match='--batch_size expects a int'):
        cfg('--batch_size', 'eight')
    with pytest.raises(ConfigError, match='True/False'):
        cfg('--traverse', 'maybe')
    with pytest.raises(ConfigError, match='group'):
        cfg('--color', '0.1')


def test_release_aliases_select_method(capsys):
    assert cfg('--distillation', 'True').method_name == 'diswm'
    assert cfg('--fine_tune', 'True').method_name == 'apv'
    assert cfg('--naive_fine_tune', 'True').method_name == 'dv2_finetune'
    assert cfg('--configs', 'defaults', 'metawolrd').dyn_cell == 'gru'
    assert 'misspelling' in capsys.readouterr().err
    with pytest.raises(ConfigError, match='Unknown --method_name'):
        cfg('--method_name', 'diswn')


def test_mode_picks_the_program_and_the_pretraining_flags_are_its_aliases():
    assert cfg().mode == 'train'
    video = cfg('--beta_vae_pretrain', 'True')                       # the release's flag
    assert (video.mode, video.beta_vae_pretrain, video.vid2act_pretrain) == ('video_pretrain', True, False)
    teacher = cfg('--mode', 'teacher_pretrain')
    assert (teacher.mode, teacher.beta_vae_pretrain, teacher.vid2act_pretrain) == ('teacher_pretrain', False, True)
    assert cfg('--vid2act_pretrain', 'True', '--mode', 'teacher_pretrain').mode == 'teacher_pretrain'
    with pytest.raises(ConfigError, match="selects --mode video_pretrain but --mode is 'eval'"):
        cfg('--mode', 'eval', '--beta_vae_pretrain', 'True')
    with pytest.raises(ConfigError, match="selects --mode teacher_pretrain but --mode is 'video_pretrain'"):
        cfg('--beta_vae_pretrain', 'True', '--vid2act_pretrain', 'True')
    with pytest.raises(ConfigError, match="Unknown --mode 'pretrain'.*video_pretrain"):
        cfg('--mode', 'pretrain')


def test_renamed_keys_and_configs_saved_by_older_code():
    assert cfg('--pretrain', '7').prefill_updates == 7                  # DreamerV2's name for it, still accepted
    assert 'pretrain' not in cfg()
    old = {'mode': 'train', 'beta_vae_pretrain': True, 'pretrain': 100, 'seed': 1}   # written before the rename
    assert tools.upgrade_saved_config(old) == {'mode': 'video_pretrain', 'beta_vae_pretrain': True,
                                               'prefill_updates': 100, 'seed': 1,
                                               'opt_eps_keras': False,  # added since: older runs had torch's eps
                                               'legacy_inertia': False}  # and today's MuJoCo inertia
    assert old['mode'] == 'train' and 'pretrain' in old                  # the caller's dict is left alone
    saved = cfg('--beta_vae_pretrain', 'True').to_dict()                  # written by this code: unchanged
    assert tools.upgrade_saved_config(saved) == saved


def test_device_default():
    import torch
    assert cfg().device == ('cuda' if torch.cuda.is_available() else 'cpu')


def test_every_default_key_is_documented():
    import os
    text = open(os.path.join(tools.ROOT, 'configs.yaml')).read()
    block = text.split('\ndmc2gym:')[0]
    for line in block.splitlines()[1:]:
        if line.strip() and not line.strip().startswith('#') and ':' in line and not line.strip().startswith('-'):
            assert '#' in line or line.rstrip().endswith(':'), f'undocumented key: {line}'


def test_official_dreamerv2_preset_builds_its_model():
    """--configs ... dreamerv2_official: official DreamerV2's DMC-vision model (categorical latents, depth 48, deeper
    heads, reward weight 1, per-update weight decay) on top of dmc2gym; the networks have those sizes."""
    import agents
    c = cfg('--configs', 'defaults', 'dmc2gym', 'dreamerv2_official', '--device', 'cpu')
    assert (c.dyn_stoch, c.dyn_discrete, c.cnn_depth, c.reward_layers, c.value_layers) == (32, 32, 48, 4, 4)
    assert c.reward_scale == 1.0 and c.weight_decay_step == 1e-6 and c.weight_decay == 0
    assert (c.dyn_deter, c.dyn_hidden, c.units, c.actor_layers) == (200, 200, 400, 4)     # dmc_vision's sizes
    agent = agents.make_agent(c, 6)
    assert agent.wm.rssm.feat_size == 32 * 32 + 200
    linears = lambda m: sum(isinstance(x, torch.nn.Linear) for x in m.modules())
    assert linears(agent.wm.reward) == 4 + 1 and linears(agent.behavior.critic) == 4 + 1
    first_conv = next(x for x in agent.wm.encoder.modules() if isinstance(x, torch.nn.Conv2d))
    assert first_conv.out_channels == 48
    for opt, lr in ((agent.model_opt, c.model_lr), (agent.actor_opt, c.actor_lr), (agent.critic_opt, c.value_lr)):
        assert isinstance(opt.opt, torch.optim.AdamW)
        assert abs(opt.opt.param_groups[0]['weight_decay'] * lr - 1e-6) < 1e-12     # 1 - lr * wd = 1 - 1e-6
    assert cfg('--configs', 'defaults', 'dreamerv2_official', 'dmc2gym').reward_scale == 2.0   # order matters
