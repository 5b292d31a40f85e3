"""ebt_policy.policies"""
