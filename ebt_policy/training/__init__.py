"""ebt_policy.training"""
