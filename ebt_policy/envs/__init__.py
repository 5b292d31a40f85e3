"""ebt_policy.envs"""
