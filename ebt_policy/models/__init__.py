"""ebt_policy.models"""
