// vnet-migrate in Azure: the function app and everything it runs on, the custom role at the
// target subscriptions, and an Event Grid system topic per target subscription.
//
// Deployed by `azd up` (azure.yaml at the repository root). Nothing here holds a key or a
// connection string: every client (the Functions host, `vnet-migrate serve`, the operator's
// CLI) authenticates with Entra ID, and SAS/shared-key auth is disabled where the service
// allows it.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names the resource group and seeds resource names.')
param environmentName string

@minLength(1)
@description('Region of the project\'s own resources.')
param location string

@description('Comma-separated ids of the subscriptions whose apps are migrated, and of every subscription holding a VNet they integrate with (subnets are written and joined there).')
param targetSubscriptionIds string

@description('Create the Event Grid subscriptions to the on-deploy function. Leave false on the first `azd up`: the function exists only after the code is deployed (see infra/README.md).')
param subscribeEvents bool = false

@description('Object id of the operator who runs `vnet-migrate rollout`/`replay` from a workstation (azd sets AZURE_PRINCIPAL_ID); empty for none.')
param operatorPrincipalId string = ''

// The one table of actions, `ARM_ACTIONS` in src/azure/permissions.rs; a unit test holds this
// file equal to it.
var migratorRole = loadJsonContent('roles/migrator-role.json')
var targets = map(split(replace(targetSubscriptionIds, ' ', ''), ','), s => toLower(s))
var token = toLower(uniqueString(subscription().id, environmentName, location))

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: { 'azd-env-name': environmentName }
}

module app 'modules/app.bicep' = {
  name: 'vnet-migrate-app'
  scope: rg
  params: {
    environmentName: environmentName
    location: location
    token: token
    operatorPrincipalId: operatorPrincipalId
  }
}

// One definition for the tenant (role names are unique per tenant), assignable at each target
// subscription.
resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, environmentName, 'vnet-migrate-migrator')
  properties: {
    roleName: '${migratorRole.roleName} (${environmentName})'
    description: migratorRole.description
    type: 'CustomRole'
    permissions: [
      {
        actions: migratorRole.actions
        notActions: migratorRole.notActions
        dataActions: migratorRole.dataActions
        notDataActions: migratorRole.notDataActions
      }
    ]
    assignableScopes: [for s in targets: '/subscriptions/${s}']
  }
}

module target 'modules/target.bicep' = [for s in targets: {
  name: 'vnet-migrate-target-${s}'
  scope: subscription(s)
  params: {
    environmentName: environmentName
    roleDefinitionId: role.id
    principalId: app.outputs.principalId
    functionAppId: app.outputs.functionAppId
    subscribeEvents: subscribeEvents
  }
}]

output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.functionAppName
output SERVICEBUS_NAMESPACE string = app.outputs.serviceBusNamespace
output VNET_MIGRATE_STEPS_QUEUE string = app.outputs.stepsQueue
output VNET_MIGRATE_LEDGER string = app.outputs.ledgerUrl
