// One target subscription: the migrator role assigned to the function's identity here, and the
// Event Grid system topic that tells on-deploy about Microsoft.Web writes here.
targetScope = 'subscription'

param environmentName string
param roleDefinitionId string
param principalId string
param functionAppId string
param subscribeEvents bool

// The role at the subscription: the tool reads and writes sites, subnets and gateways
// wherever they are in it. Narrow it to resource groups by assigning at those instead.
resource migrator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, roleDefinitionId)
  properties: {
    roleDefinitionId: roleDefinitionId
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// A subscription's system topic lives in a resource group of that subscription.
resource eventsGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}-events'
  location: deployment().location
  tags: { 'azd-env-name': environmentName }
}

module events 'events.bicep' = {
  name: 'vnet-migrate-events'
  scope: eventsGroup
  params: {
    functionAppId: functionAppId
    subscribeEvents: subscribeEvents
  }
}
