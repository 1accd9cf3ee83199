"""Structured channel pruning: coupled groups, criteria, pruning, JSON plans, sensitivity analysis."""

from .counting import count_flops as count_flops
from .counting import count_macs as count_macs
from .counting import count_params as count_params
from .counting import file_size as file_size
from .criteria import CRITERIA as CRITERIA
from .criteria import bn_scale_importance as bn_scale_importance
from .criteria import fpgm_importance as fpgm_importance
from .criteria import l1_importance as l1_importance
from .discovery import GroupReport as GroupReport
from .discovery import channel_groups as channel_groups
from .discovery import find_groups as find_groups
from .discovery import prunable_groups as prunable_groups
from .groups import ChannelGroup as ChannelGroup
from .groups import UnprunedGroupsWarning as UnprunedGroupsWarning
from .groups import resolve_ignore as resolve_ignore
from .plan import PrunePlan as PrunePlan
from .plan import apply_plan as apply_plan
from .plan import compose_plans as compose_plans
from .plan import load_plan as load_plan
from .plan import save_plan as save_plan
from .pruner import prune_model as prune_model
from .ratios import get_ratios_by_loss as get_ratios_by_loss
from .ratios import ratios_for_flops as ratios_for_flops
from .sensitivity import analyze_sensitivity as analyze_sensitivity
from .sensitivity_file import load_sensitivities as load_sensitivities
from .sensitivity_file import merge_sensitivities as merge_sensitivities
from .verify import compare_pruned as compare_pruned
from .verify import masked_model as masked_model

__all__ = [
    "analyze_sensitivity",
    "apply_plan",
    "bn_scale_importance",
    "channel_groups",
    "ChannelGroup",
    "compare_pruned",
    "compose_plans",
    "count_flops",
    "count_macs",
    "count_params",
    "CRITERIA",
    "file_size",
    "find_groups",
    "fpgm_importance",
    "get_ratios_by_loss",
    "GroupReport",
    "l1_importance",
    "load_plan",
    "load_sensitivities",
    "masked_model",
    "merge_sensitivities",
    "prunable_groups",
    "prune_model",
    "PrunePlan",
    "ratios_for_flops",
    "resolve_ignore",
    "save_plan",
    "UnprunedGroupsWarning",
]
